"""A Mixmaster INI file (`mixmaster_config`) read as it is and merged into the config; and a
server started with nothing but such a file builds a push (docs/push.md, "Mixmaster INI")."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from push_builds import finished

from mistryd.config import load
from mistryd.errors import ConfigError
from mistryd.push.jobspec import DEFAULT_PROJECT
from mistryd.push.mixmaster_ini import mail_url, read

# the file `mmsetup` writes, with a key and a repository filled in
MMSETUP = """\
; This is the configuration file for mixmaster. It maps project repositories
; to build commands and defines application settings.

[_]

; The SSH key that should be loaded at the start of each build.
sshKey = deploy_key

; Use "dryrun" to echo build commands for testing purposes.
; Use "normal" to have build commands executed.
mode = dryrun

; The email address that should receive build updates.
mailto = ops@example.com

; Sample project configuration.
[example-org/example-repo]
production = make deploy
staging = make deploy-to-staging
master/my-task = make my-task
"""


def config_with(tmp_path, ini: str, **raw):
    (tmp_path / "projects").mkdir(exist_ok=True)
    (tmp_path / "deploy_key").write_text("not read at load\n")
    (tmp_path / "mixmaster.ini").write_text(ini)
    path = tmp_path / "mistryd.json"
    path.write_text(json.dumps({"projects_path": "projects", "build_path": "builds",
                                "mixmaster_config": "mixmaster.ini", **raw}))
    return load(path)


def test_the_file_mmsetup_writes(tmp_path):
    cfg = config_with(tmp_path, MMSETUP)
    assert cfg.ssh_key == tmp_path / "deploy_key"
    assert cfg.dry_run is True
    assert cfg.notify == (mail_url("ops@example.com"),)
    assert cfg.notify[0].startswith("mailto://localhost:25/?to=ops@example.com&from=mistryd@")
    repo = cfg.repositories["example-org/example-repo"]
    assert repo.branches == {"production": "make deploy", "staging": "make deploy-to-staging",
                             "master/my-task": "make my-task"}
    assert repo.project is None and repo.url is None  # the default project, the payload's URL


def test_keys_before_any_section_are_settings_and_empty_ones_are_unset(tmp_path):
    """Mixmaster's own test fixture: no [_] header, `sshKey =` empty, old `mailcommand`."""
    cfg = config_with(tmp_path, "sshKey =\nmailto =\nmailcommand = /usr/sbin/sendmail -t\n\n"
                                "[test-org/test-repo]\n  production = echo Stub  \n"
                                "# a comment\nmaster/my-task = echo task ; not a comment\n")
    assert cfg.ssh_key is None and cfg.notify == () and cfg.dry_run is False
    assert cfg.repositories["test-org/test-repo"].branches == {
        "production": "echo Stub", "master/my-task": "echo task ; not a comment"}


def test_the_json_config_wins(tmp_path):
    cfg = config_with(tmp_path, MMSETUP, dry_run=False, notify=["json://127.0.0.1:9/hook"],
                      repositories={"Example-Org/Example-Repo": {"branches": {"main": "make"}},
                                    "other/repo": {"branches": {"main": "true"}}})
    assert cfg.dry_run is False and cfg.notify == ("json://127.0.0.1:9/hook",)
    assert set(cfg.repositories) == {"Example-Org/Example-Repo", "other/repo"}
    assert cfg.ssh_key == tmp_path / "deploy_key"  # not given in JSON: the INI's


@pytest.mark.parametrize(("ini", "message"), [
    ("[_]\nmode = fast\n", "mixmaster.ini, line 2, [_] mode: mode must be dryrun or normal"),
    ("[_]\nmailto = a@b\nfrobnicate = 1\n", "line 3, [_] frobnicate: unknown setting"),
    ("[_]\nhook = ~/bin/notify\n", "line 2, [_] hook: Mixmaster's hook scripts are not run"),
    ("\n[a/b]\nmain = make\njust words\n", "line 4: 'just words' is not `key = value`"),
    ("[a/b]\nmain = x\n[a/b]\nmain = y\n", "line 3: section [a/b] appears twice"),
    ("[a/b]\nmain = x\nmain = y\n", "line 3, section [a/b]: main appears twice"),
    ("[_]\n\n[example]\nmain = make\n", "line 3, section [example]: [example] is not a repository"),
    ("[hooks]\njob-start = cat\n", "line 1, section [hooks]: Mixmaster's hook scripts"),
    ("[a/b]\n; nothing yet\n", "line 1, section [a/b]: has no branch rules"),
    ("[a/b]\n/main = make\n", "line 1, section [a/b]: \"/main\" is not a branch rule"),
    ("sshKey = missing_key\n", "line 1, [_] sshKey: "),
])
def test_a_bad_file_is_one_line_naming_the_file_and_line(tmp_path, ini, message):
    with pytest.raises(ConfigError) as e:
        config_with(tmp_path, ini)
    assert e.value.key == "mixmaster_config"
    assert message in e.value.message and str(tmp_path / "mixmaster.ini") in e.value.message
    assert "\n" not in e.value.message


def test_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="mixmaster_config: cannot read .*nothing.ini"):
        load_path = tmp_path / "c.json"
        (tmp_path / "projects").mkdir()
        load_path.write_text(json.dumps({"projects_path": "projects", "build_path": "b",
                                         "mixmaster_config": "nothing.ini"}))
        load(load_path)
    (tmp_path / "binary.ini").write_bytes(b"\xff\xfe[a/b]\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read(tmp_path / "binary.ini")


def test_a_server_started_with_only_a_mixmaster_file_builds_a_push(start_server, git_server,
                                                                   tmp_path):
    repo = git_server()
    commit = repo.commit({"Makefile": "deploy:\n\techo deployed $(MISTRY_BRANCH) > "
                                      "/data/artifacts/out.txt\n"}, branch="production")
    ini = tmp_path / "mixmaster.ini"
    ini.write_text("[_]\nsshKey =\nmode = normal\nmailto =\n\n"
                   "[example-org/example-repo]\nproduction = make deploy\n")
    srv = start_server(projects=(), mixmaster_config=str(ini))
    r = requests.post(f"{srv.url}/", timeout=60, json={
        "scm": "git", "repositoryUrl": repo.url, "project": "example-org/example-repo",
        "target": "production"})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["project"] == DEFAULT_PROJECT and answer["commit"] == commit
    job = finished(answer)
    assert job["BuildInfo"]["Status"] == "succeeded", job["BuildInfo"]["ContainerStdouterr"][-2000:]
    out = requests.get(f"{srv.url}/artifacts/{DEFAULT_PROJECT}/{answer['id']}/out.txt", timeout=30)
    assert out.text == "deployed production\n"


def test_mistryd_refuses_a_bad_file_in_one_line(tmp_path):
    """The command line says what is wrong, without a traceback."""
    (tmp_path / "projects").mkdir()
    (tmp_path / "mixmaster.ini").write_text("[org/repo]\nproduction make deploy\n")
    (tmp_path / "c.json").write_text(json.dumps({
        "projects_path": "projects", "build_path": "builds", "mixmaster_config": "mixmaster.ini"}))
    out = subprocess.run([".venv/bin/mistryd", "--config", str(tmp_path / "c.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "mixmaster.ini, line 2: 'production make deploy' is not `key = value`" in out.stderr
