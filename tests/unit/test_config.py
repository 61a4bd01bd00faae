import json

import pytest

from mistryd.config import load
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
