import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from mistryd.cli import main
from mistryd.config import CONTAINER_KEYS, PROJECT_KEYS, Config, ProjectSettings, Token, load
from mistryd.errors import ConfigError


def write(tmp_path, **raw):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    return path


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "projects").mkdir()
    monkeypatch.chdir("/")
    cfg = load(write(tmp_path, projects_path="projects", build_path="var/builds"))
    assert cfg.projects_path == tmp_path / "projects"
    assert cfg.build_path == tmp_path / "var" / "builds"
    assert cfg.build_path.is_dir()
    assert cfg.backlog == 2 * cfg.job_concurrency


@pytest.mark.parametrize("raw, key, problem", [
    ({"projects_path": None}, "projects_path", "is required"),
    ({"projects_path": "missing", "build_path": "b"}, "projects_path", "is not a folder"),
    ({"job_concurrency": "2"}, "job_concurrency", "must be an integer"),
    ({"job_concurrency": 0}, "job_concurrency", "at least 1"),
    ({"filesystem": "zfs"}, "filesystem", "must be one of"),
    ({"network_mode": "container:x"}, "network_mode", "must be one of"),
    ({"addr": "localhost"}, "addr", "HOST:PORT"),
    ({"mounts": {"/a": "relative"}}, "mounts./a", "absolute"),
    ({"colour": 1}, "colour", "unknown key"),
])
def test_bad_config_names_the_key(tmp_path, raw, key, problem):
    (tmp_path / "p").mkdir()
    base = {"projects_path": "p", "build_path": "b"}
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, **{k: v for k, v in {**base, **raw}.items() if v is not None}))
    assert e.value.key == key
    assert problem in e.value.message
    assert "\n" not in e.value.message


def test_not_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(path)


BASE = {"projects_path": "p", "build_path": "b"}


def from_raw(tmp_path, **raw):
    (tmp_path / "p").mkdir(exist_ok=True)
    return load(write(tmp_path, **{**BASE, **raw}))


def problem_with(tmp_path, **raw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        from_raw(tmp_path, **raw)
    return e.value


def test_every_default_is_the_documented_one(tmp_path):
    cfg = from_raw(tmp_path)
    assert (cfg.mounts, cfg.container_env, cfg.projects, cfg.cap_add, cfg.tokens, cfg.allowed_hosts) == (
        {}, {}, {}, (), (), ())
    assert cfg.job_concurrency == (os.cpu_count() or 1) and cfg.job_backlog is None
    assert (cfg.addr, cfg.host, cfg.port) == ("127.0.0.1:8462", "127.0.0.1", 8462)
    assert (cfg.filesystem, cfg.network_mode, cfg.uid, cfg.pull_base) == ("auto", "bridge", None, False)
    assert (cfg.http_threads, cfg.max_body_bytes, cfg.rsync_addr) == (128, 1 << 20, None)
    assert (cfg.build_timeout, cfg.memory, cfg.cpus, cfg.pids_limit) == (3600, None, None, 4096)
    assert (cfg.shutdown_grace, cfg.max_build_bytes, cfg.max_build_age) == (30, None, None)
    assert (cfg.gc_interval, cfg.min_free_bytes, cfg.anonymous_read) == (300, 256 << 20, False)


def test_the_sample_config_loads(tmp_path):
    cfg = load(Path(__file__).parents[2] / "config.sample.json", build_path=str(tmp_path / "b"))
    assert (cfg.job_concurrency, cfg.backlog, cfg.rsync_addr) == (2, 8, "127.0.0.1:8873")
    ca_bundle = str(Path("/etc/ssl/certs/ca-certificates.crt").resolve())
    assert cfg.mounts == {ca_bundle: "/etc/ssl/certs/host-ca.crt:ro"}


def test_values_of_every_kind_are_taken(tmp_path):
    token = {"name": "ci", "token": "t" * 16, "role": "build"}
    cfg = from_raw(tmp_path, job_backlog=0, cpus=2, memory="2g", pids_limit=None, pull_base=True,
                   max_build_age=60, cap_add=["CHOWN"], tokens=[token], mounts={"p": "/src:ro"},
                   container_env={"A": "1"}, rsync_addr="[::1]:873", uid=0)
    assert (cfg.backlog, cfg.cpus, cfg.memory, cfg.pids_limit, cfg.pull_base) == (0, 2.0, "2g", None, True)
    assert (cfg.max_build_age, cfg.cap_add, cfg.uid, cfg.container_uid) == (60, ("CHOWN",), 0, 0)
    assert cfg.tokens == (Token("ci", "t" * 16, "build"),)
    assert cfg.mounts == {str(tmp_path / "p"): "/src:ro"}  # the source resolves against the file
    assert cfg.container_env == {"A": "1"}


# One case per kind of field: the key is named, the problem says what to write, and what was given.
@pytest.mark.parametrize("raw, key, problem", [
    ({"http_threads": "x"}, "http_threads", 'must be an integer, got "x"'),
    ({"http_threads": 1.5}, "http_threads", "must be an integer, got 1.5"),
    ({"max_body_bytes": True}, "max_body_bytes", "must be an integer, got true"),
    ({"http_threads": 0}, "http_threads", "must be at least 1, got 0"),
    ({"gc_interval": -1}, "gc_interval", "must not be negative, got -1"),
    ({"job_backlog": "8"}, "job_backlog", 'must be an integer, got "8"'),
    ({"pids_limit": 0}, "pids_limit", "must be positive (or null for no limit), got 0"),
    ({"max_build_bytes": -1}, "max_build_bytes", "must be positive (or null for no limit)"),
    ({"cpus": "2"}, "cpus", 'must be a number, got "2"'),
    ({"cpus": True}, "cpus", "must be a number, got true"),
    ({"memory": 512}, "memory", "must be a string, got 512"),
    ({"uid": "0"}, "uid", 'must be an integer, got "0"'),
    ({"pull_base": "yes"}, "pull_base", 'must be true or false, got "yes"'),
    ({"anonymous_read": 1}, "anonymous_read", "must be true or false, got 1"),
    ({"filesystem": "zfs"}, "filesystem", 'must be one of auto, btrfs or plain, got "zfs"'),
    ({"build_path": 3}, "build_path", "must be a string (a path), got 3"),
    ({"build_path": ""}, "build_path", "is required"),
    ({"mounts": ["/a"]}, "mounts", 'must be an object, got ["/a"]'),
    ({"container_env": {"A": 1}}, "container_env.A", "must be a string, got 1"),
    ({"cap_add": "CHOWN"}, "cap_add", 'must be a list, got "CHOWN"'),
    ({"cap_add": ["chown"]}, "cap_add[0]", 'is not a capability like "CHOWN"'),
    ({"rsync_addr": "rsync.lan"}, "rsync_addr", "is not HOST:PORT"),
    ({"tokens": {"ci": "t"}}, "tokens", "must be a list"),
    ({"tokens": ["t" * 16]}, "tokens[0]", "must be an object"),
    ({"tokens": [{"name": "ci", "token": "short", "role": "build"}]}, "tokens[0].token",
     "must be at least 16 characters"),
    ({"tokens": [{"name": "ci", "token": "t" * 16, "role": "root"}]}, "tokens[0].role",
     'must be one of read, build, admin or builder, got "root"'),
    ({"tokens": [{"name": "ci", "token": "t" * 16}]}, "tokens[0].role", "is required"),
    ({"tokens": [{"name": "", "token": "t" * 16, "role": "read"}]}, "tokens[0].name", "must not be empty"),
])
def test_wrong_values_name_the_key_and_what_to_write(tmp_path, raw, key, problem):
    error = problem_with(tmp_path, **raw)
    assert error.key == key
    assert problem in error.message
    assert error.message.startswith(f"config: {key}: ") and "\n" not in error.message


def test_a_wrong_token_is_not_shown_whole(tmp_path):
    token = "a-secret-token-that-is-long-enough"
    error = problem_with(tmp_path, tokens=[{"name": "ci", "token": token, "role": "god"}])
    assert token not in error.message
    cfg = from_raw(tmp_path, tokens=[{"name": "ci", "token": token, "role": "read"}])
    assert token not in repr(cfg)


def test_unknown_keys_are_refused_and_a_near_miss_is_named(tmp_path):
    error = problem_with(tmp_path, job_concurency=2)
    assert error.key == "job_concurency"
    assert error.message == 'config: job_concurency: unknown key (did you mean "job_concurrency"?)'
    assert "known: addr, allowed_hosts," in problem_with(tmp_path, colour="blue").message
    error = problem_with(tmp_path, tokens=[{"name": "ci", "token": "t" * 16, "role": "read", "roles": 1}])
    assert error.key == "tokens[0].roles" and "unknown key" in error.message


def test_project_overrides_replace_the_server_wide_values(tmp_path):
    cfg = from_raw(tmp_path, memory="2g", cpus=1, network_mode="none", projects={
        "big": {"build_timeout": 7200, "memory": "8g", "cpus": 4, "pids_limit": 8192, "network_mode": "host"},
        "free": {"memory": None, "cpus": None, "pids_limit": None}})
    assert cfg.for_project("big") == ProjectSettings(build_timeout=7200, memory="8g", cpus=4,
                                                     pids_limit=8192, network_mode="host")
    # null is "no limit" for this project; what it does not name comes from the server-wide keys
    assert cfg.for_project("free") == ProjectSettings(build_timeout=3600, memory=None, cpus=None,
                                                      pids_limit=None, network_mode="none")
    assert cfg.for_project("other") == ProjectSettings(build_timeout=3600, memory="2g", cpus=1,
                                                       pids_limit=4096, network_mode="none")


@pytest.mark.parametrize("key, bad", [("build_timeout", "1h"), ("build_timeout", -1), ("memory", 8),
                                      ("cpus", 0), ("pids_limit", 1.5), ("network_mode", "bridged")])
def test_an_override_is_checked_as_the_server_wide_key_is(tmp_path, key, bad):
    server_wide = problem_with(tmp_path, **{key: bad})
    per_project = problem_with(tmp_path, projects={"big": {key: bad}})
    assert per_project.key == f"projects.big.{key}"
    assert per_project.message.split(": ", 2)[2] == server_wide.message.split(": ", 2)[2]


@pytest.mark.parametrize("projects, key, problem", [
    ({"big": {"memroy": "8g"}}, "projects.big.memroy", 'unknown override (did you mean "memory"?)'),
    ({"big": {"uid": 0}}, "projects.big.uid", "unknown override (known: build_timeout, memory, cpus"),
    ({"big": "8g"}, "projects.big", 'must be an object, got "8g"'),
    ({"big": {"network_mode": None}}, "projects.big.network_mode", "must be one of bridge, none or host"),
    (["big"], "projects", "must be an object"),
])
def test_bad_overrides_name_the_project_and_key(tmp_path, projects, key, problem):
    error = problem_with(tmp_path, projects=projects)
    assert error.key == key
    assert problem in error.message


def test_the_project_keys_are_the_project_settings():
    assert tuple(f.name for f in dataclasses.fields(ProjectSettings)) == CONTAINER_KEYS
    assert set(CONTAINER_KEYS) <= {f.name for f in dataclasses.fields(Config)}
    assert set(PROJECT_KEYS) - set(CONTAINER_KEYS) == {"duplicates", "labels"}


def test_queue_keys(tmp_path):
    config = from_raw(tmp_path, queue="redis://:secret@10.0.0.5:6379/2", job_concurrency=0,
                         projects={"p": {"labels": ["big", "gpu-1"], "duplicates": "supersede",
                                         "memory": "1g"}})
    assert config.labels("p") == ("big", "gpu-1") and config.labels("other") == ()
    assert config.duplicates("p") == "supersede" and config.duplicates("other") == "coalesce"
    assert config.for_project("p").memory == "1g"
    assert config.builder_timeout == 30
    for key, bad, problem in [
        ("queue", {"queue": "http://x"}, 'must be "redis://HOST:PORT/DB"'),
        ("job_concurrency", {"job_concurrency": 0}, "needs a shared `queue`"),
        ("projects.p.labels[0]", {"projects": {"p": {"labels": ["a b"]}}}, "is not a name like"),
        ("projects.p.duplicates", {"projects": {"p": {"duplicates": "x"}}},
         "must be one of coalesce or supersede"),
        ("builder_timeout", {"builder_timeout": 0}, "must be positive"),
    ]:
        error = problem_with(tmp_path, **bad)
        assert error.key == key and problem in error.message, (key, error)


def test_a_replaced_config_is_checked_again_and_keeps_its_paths(tmp_path):
    cfg = from_raw(tmp_path, mounts={"p": "/src"})
    smaller = dataclasses.replace(cfg, min_free_bytes=0)
    assert smaller.min_free_bytes == 0
    assert (smaller.projects_path, smaller.mounts) == (cfg.projects_path, cfg.mounts)
    with pytest.raises(ValidationError):
        dataclasses.replace(cfg, min_free_bytes=-1)


def test_mistryd_with_a_bad_config_says_one_line_and_exits_2(tmp_path):
    path = write(tmp_path, projects_path=str(tmp_path), build_path="b", http_threads="x")
    result = CliRunner().invoke(main, ["--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr == 'mistryd: config: http_threads: must be an integer, got "x"\n'
    assert result.stdout == ""
