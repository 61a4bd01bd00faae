"""What a push build's container leaves in the group's cache is hostile: the next build's git
work on the host never runs a hook, a configured command or a filter from it, and never follows
a link out of the checkout. And a queued push build survives a restart of the server."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import requests
from push_builds import finished
from support import make_setup, wait_for

REPO = "example-org/example-repo"

# what a hostile build leaves in its checkout (its working folder) for the next build
PLANT_SH = r"""#!/bin/sh
set -e
kind=$1 marks=$2 victim=$3
evil() { printf '#!/bin/sh\ntouch %s/%s\n' "$marks" "$1"; }
case $kind in
hooks)
  mkdir -p .git/hooks .git/evil-hooks .git/info
  for h in pre-auto-gc post-checkout post-merge post-rewrite reference-transaction \
           fsmonitor-watchman post-index-change pre-push; do
    evil "hook-$h" > .git/hooks/$h; evil "hookspath-$h" > .git/evil-hooks/$h
    chmod +x .git/hooks/$h .git/evil-hooks/$h
  done
  evil script > .git/evil.sh; chmod +x .git/evil.sh
  evil from-worktree > evil.sh; chmod +x evil.sh
  echo '* filter=evil diff=evil' > .git/info/attributes
  printf '[core]\n\tsshCommand = .git/evil.sh\n' > .git/evil.inc
  cat >> .git/config <<EOF
[core]
	fsmonitor = .git/evil.sh
	sshCommand = .git/evil.sh
	hooksPath = .git/evil-hooks
	pager = .git/evil.sh
	askPass = .git/evil.sh
	alternateRefsCommand = .git/evil.sh
	gitProxy = .git/evil.sh
[filter "evil"]
	clean = .git/evil.sh
	smudge = .git/evil.sh
	process = .git/evil.sh
[diff "evil"]
	textconv = .git/evil.sh
[uploadpack]
	packObjectsHook = .git/evil.sh
[protocol]
	allow = always
[url "ext::.git/evil.sh "]
	insteadOf = git://
[include]
	path = evil.inc
EOF
  ;;
gitlink) rm -rf .git; ln -s "$victim/.git" .git ;;
gitfile) rm -rf .git; echo "gitdir: $victim/.git" > .git ;;
innerlink) ln -s "$victim/.git/hooks" .git/hooks; rm -rf .git/refs/remotes
           ln -s "$victim/.git/refs" .git/refs/remotes ;;
checkoutlink) cd /data/cache; rm -rf checkout; ln -s "$victim" checkout ;;
esac
echo "planted $kind"
"""
KINDS = ("hooks", "gitlink", "gitfile", "innerlink", "checkoutlink")


def _victim(root: Path, marks: Path) -> Path:
    """A repository of the host's, with a hook: nothing of it may be run, read or changed."""
    victim = root / "victim"
    victim.mkdir()
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "init", "-q", str(victim)], check=True, env=env)
    (victim / "precious.txt").write_text("the host's own file\n")
    hook = victim / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marks}/victim-hook\n")
    hook.chmod(0o755)
    return victim


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        data = os.readlink(path) if path.is_symlink() else (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
        out[str(path.relative_to(root))] = f"{data} {st.st_mode:o} {st.st_mtime_ns}"
    return out


def _push(srv_url: str, repo, branch: str, commit: str) -> dict:
    r = requests.post(f"{srv_url}/", timeout=60, json={
        "scm": "git", "repositoryUrl": repo.url, "project": REPO, "target": branch,
        "commit": commit})
    assert r.status_code == 202, r.text
    return r.json()


def test_a_hostile_git_folder_in_the_cache_is_never_run_or_followed(start_server, git_server,
                                                                     tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    victim = _victim(tmp_path, marks)
    before = _snapshot(victim)
    repo = git_server()
    first = {kind: repo.commit({"plant.sh": PLANT_SH, "v": f"1 {kind}\n"}, branch=kind)
             for kind in KINDS}
    srv = start_server(projects=("hello",), repositories={REPO: {
        "url": repo.url, "project": "hello",
        "branches": {kind: f"sh plant.sh {kind} {marks} {victim}" for kind in KINDS}}})
    for kind in KINDS:
        info = finished(_push(srv.url, repo, kind, first[kind]))["BuildInfo"]
        assert info["Status"] == "succeeded", info["ContainerStdouterr"][-2000:]
        assert f"planted {kind}" in info["ContainerStdouterr"]
    # the next push of each branch does its git work in what the first one left
    logs = {}
    for kind in KINDS:
        second = repo.commit({"v": f"2 {kind}\n"}, branch=kind)
        info = finished(_push(srv.url, repo, kind, second))["BuildInfo"]
        log = logs[kind] = info["ContainerStdouterr"]
        assert info["Status"] == "succeeded", log[-3000:]
        assert info["Incremental"] is True and f"checking out {second}" in log
    assert "into the existing checkout" in logs["hooks"]  # defused and used, not thrown away
    for kind in ("gitlink", "gitfile", "innerlink"):
        assert ".git is not a plain folder; cloning again" in logs[kind], logs[kind][-3000:]
    assert "the checkout is not a plain folder; cloning again" in logs["checkoutlink"]
    assert sorted(os.listdir(marks)) == []  # nothing the container left was ever run here
    assert _snapshot(victim) == before  # nor read into, written or removed


def test_a_queued_push_build_survives_a_restart(tmp_path, git_server, docker_engine):
    repo = git_server()
    commit = repo.commit({"build.sh": "echo built $MISTRY_BRANCH $MISTRY_COMMIT\n"},
                         branch="production")
    setup = make_setup(tmp_path, ("sleeper", "hello"), job_concurrency=1, shutdown_grace=60,
                       repositories={REPO: {"url": repo.url, "project": "hello",
                                            "branches": {"production": "sh build.sh"}}})
    proc = setup.start()
    try:
        running = requests.post(f"{setup.url}/jobs?async", timeout=30, json={
            "project": "sleeper", "params": {"sleep": "4"}}).json()["id"]
        wait_for(lambda: requests.get(f"{setup.url}/job/sleeper/{running}", timeout=10, headers={
            "Accept": "application/json"}).json()["Status"] == "running")
        answer = _push(setup.url, repo, "production", commit)
        queued = requests.get(answer["url"], headers={"Accept": "application/json"}, timeout=10)
        assert queued.json()["Status"] == "queued"  # behind the running build
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert not (setup.builds / "hello" / "ready" / answer["id"]).exists()  # it did not run
    proc = setup.start()  # the queued push build was kept and runs now
    try:
        info = finished(answer, timeout=120)["BuildInfo"]
        log = info["ContainerStdouterr"]
        assert info["Status"] == "succeeded", log[-3000:]
        assert f"push build of {REPO} production at {commit}" in log  # its branch was kept
        assert f"built production {commit}" in log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
