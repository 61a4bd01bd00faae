"""mistryd/remote/contexts.py: a remote builder's build contexts taken by several jobs at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mistryd.queue import JobKey
from mistryd.remote.contexts import Contexts


class Central:
    """Stands in for transfer.Central.fetch_context: makes the folder with one file, and records
    every fetch. `overlap` makes the first fetch wait (up to `wait` s) for a second one to begin:
    two fetches of one context at once are what must never happen."""

    def __init__(self, overlap: bool = False, wait: float = 0.5, fail: bool = False):
        self.fetched: list[tuple[str, str]] = []
        self.overlap = overlap
        self.wait = wait
        self.fail = fail
        self.second = threading.Event()

    def fetch(self, project: str, fingerprint: str, dest: Path) -> None:
        self.fetched.append((project, fingerprint))
        if self.fail:
            raise OSError("the central server went away")
        if self.overlap:
            if len(self.fetched) == 1:
                self.second.wait(self.wait)
            else:
                self.second.set()
        dest.mkdir(parents=True)
        (dest / "Dockerfile").write_text(f"FROM {fingerprint}\n")


def key(n: int, project: str = "app") -> JobKey:
    return JobKey(project, f"{n:064x}")


def test_a_context_is_fetched_once_and_kept(tmp_path):
    central = Central()
    contexts = Contexts(tmp_path, central.fetch)
    first = contexts.take(key(1), "f1")
    assert first == tmp_path / "app" / "f1" and (first / "Dockerfile").read_text() == "FROM f1\n"
    assert contexts.take(key(2), "f1") == first
    assert central.fetched == [("app", "f1")]


def test_jobs_of_one_context_starting_together_fetch_it_once(tmp_path):
    central = Central(overlap=True)
    contexts = Contexts(tmp_path, central.fetch)
    got: dict[int, Path] = {}
    threads = [threading.Thread(target=lambda n=n: got.__setitem__(n, contexts.take(key(n), "f1")))
               for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert central.fetched == [("app", "f1")]
    assert got[1] == got[2] == tmp_path / "app" / "f1"


def test_an_older_context_stays_while_a_job_builds_from_it(tmp_path):
    central = Central()
    contexts = Contexts(tmp_path, central.fetch)
    old = contexts.take(key(1), "f1")
    other_project = contexts.take(key(9, "lib"), "g1")
    new = contexts.take(key(2), "f2")  # the project changed while job 1 runs
    assert old.is_dir() and new.is_dir()
    contexts.release(key(1))
    newest = contexts.take(key(3), "f3")
    assert not old.exists()  # no job holds it: gone once a newer one arrived
    assert new.is_dir() and newest.is_dir()  # job 2 still holds f2
    assert other_project.is_dir()  # another project's contexts are its own


def test_a_failed_fetch_holds_nothing_and_the_next_job_fetches_again(tmp_path):
    central = Central(fail=True)
    contexts = Contexts(tmp_path, central.fetch)
    with pytest.raises(OSError):
        contexts.take(key(1), "f1")
    central.fail = False
    assert contexts.take(key(2), "f1").is_dir()
    assert central.fetched == [("app", "f1"), ("app", "f1")]
