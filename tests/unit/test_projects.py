import os

import pytest

from mistryd.errors import UnknownProject
from mistryd.projects import QUICK_ENTRIES, Projects, known_fingerprint


@pytest.fixture
def projects(tmp_path):
    p = tmp_path / "demo"
    (p / "sub").mkdir(parents=True)
    (p / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    (p / "sub" / "a.txt").write_text("a")
    (p / "run.sh").write_text("echo hi\n")
    return Projects(tmp_path)


def test_fingerprint_ignores_mtimes_and_owners(projects, tmp_path):
    before = projects.fingerprint("demo")
    os.utime(tmp_path / "demo" / "sub" / "a.txt", (1, 1))
    os.chown(tmp_path / "demo" / "run.sh", 1234, 1234)
    assert projects.fingerprint("demo") == before
    assert Projects(tmp_path).fingerprint("demo") == before  # a fresh process agrees


@pytest.mark.parametrize("change", ["content", "new file", "exec bit", "rename", "symlink"])
def test_fingerprint_follows_content(projects, tmp_path, change):
    before = projects.fingerprint("demo")
    d = tmp_path / "demo"
    if change == "content":
        (d / "sub" / "a.txt").write_text("b")
    elif change == "new file":
        (d / "b.txt").write_text("")
    elif change == "exec bit":
        os.chmod(d / "run.sh", 0o755)
    elif change == "rename":
        os.rename(d / "sub" / "a.txt", d / "sub" / "c.txt")
    else:
        os.symlink("run.sh", d / "link")
    assert projects.fingerprint("demo") != before


def test_unchanged_files_are_not_read_again(projects, tmp_path, monkeypatch):
    projects.fingerprint("demo")
    opened = []
    real_open = open

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", spy)
    projects.fingerprint("demo")
    assert opened == []
    (tmp_path / "demo" / "run.sh").write_text("echo changed\n")
    projects.fingerprint("demo")
    assert opened == [str(tmp_path / "demo" / "run.sh")]


@pytest.mark.parametrize("name", ["missing", "../demo", ".demo", "sub/x", ""])
def test_unknown_or_unsafe_projects(projects, name):
    with pytest.raises(UnknownProject):
        projects.path(name)


def test_names_lists_projects_with_a_dockerfile(projects, tmp_path):
    (tmp_path / "not-a-project").mkdir()
    assert projects.names() == ["demo"]


def test_known_fingerprint_is_told_only_without_reading_a_file(projects, tmp_path):
    folder = tmp_path / "demo"
    assert known_fingerprint(folder) is None  # nothing hashed yet
    full = projects.fingerprint("demo")
    assert known_fingerprint(folder) == full  # stats only, the same fingerprint
    os.symlink("run.sh", folder / "link")  # a link is read from its stat's entry: no file read
    assert known_fingerprint(folder) == projects.fingerprint("demo") != full
    (folder / "sub" / "a.txt").write_text("b")
    assert known_fingerprint(folder) is None  # changed: only a full fingerprint reads it


def test_known_fingerprint_stats_at_most_quick_entries(projects, tmp_path):
    folder = tmp_path / "demo"
    for n in range(QUICK_ENTRIES - 4):  # with Dockerfile, run.sh, sub and sub/a.txt: the limit
        (folder / "sub" / f"{n}.txt").write_text("")
    full = projects.fingerprint("demo")
    assert known_fingerprint(folder) == full
    (folder / "one-more.txt").write_text("")
    projects.fingerprint("demo")  # every file hashed, one entry too many to stat quickly
    assert known_fingerprint(folder) is None
