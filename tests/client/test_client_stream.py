"""Fetching a many-file tree as one verified stream: exact, tamper-proof, resumable, and a re-fetch
moves only what changed. Real server, real `mistry` command, real TCP proxies in between."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest
import requests
from client_helpers import (
    CuttingProxy,
    RecordingProxy,
    TamperingProxy,
    exact_tree_of,
    inodes_of,
    port_of,
    run_mistry,
)
from support import shut, wait_for

from mistry_client import parallel
from mistry_client.manifest import Manifest

PROJECT = "client-many"


@pytest.fixture
def many(start_server, tmp_path):
    """A server with `client-many` built, the build's artifacts folder, and `fetch(target, port)`
    running `mistry build` with its own cache folder for target state."""
    server = start_server(projects=(PROJECT,))
    info = server.build(PROJECT)
    assert info["ExitCode"] == 0, info
    artifacts = server.build_path / PROJECT / "ready" / info["ID"] / "data" / "artifacts"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}

    def fetch(target, port=None, *extra):
        return run_mistry(["build", "--project", PROJECT, "-t", str(target), *extra],
                          port=port or port_of(server.url), env=env)

    fetch.server = server
    fetch.artifacts = artifacts
    fetch.build_id = info["ID"]
    return fetch


def _tars(proxy: RecordingProxy) -> list[str]:
    return [line for line in proxy.request_lines() if ".tar" in line]


def _manifest_gets(proxy: RecordingProxy) -> list[str]:
    return [line for line in proxy.request_lines()
            if line.startswith("GET /artifacts/") and line.split("?")[0].endswith("/")]


def _file_gets(proxy: RecordingProxy) -> list[str]:
    return [line for line in proxy.request_lines() if line.startswith("GET /artifacts/")
            and line not in _manifest_gets(proxy) and ".tar" not in line]


def _untouched(target, parent) -> None:
    assert sorted(os.listdir(target)) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    assert [p for p in os.listdir(parent) if p.startswith(".mistry-")] == []


def test_a_many_file_tree_arrives_exactly_in_streams_that_cover_it_once(many, tmp_path):
    """Several streams (one per download process, on Linux) of contiguous runs of the
    manifest's entries, together covering every file once; no single-file GET."""
    recorder = RecordingProxy(port_of(many.server.url))
    try:
        r = many(tmp_path / "out", recorder.port)
    finally:
        recorder.close()
    assert r.returncode == 0, r.stderr
    expected = exact_tree_of(many.artifacts)
    assert len([v for v in expected.values() if v[0] == "file"]) > 600
    assert expected["empty.txt"][0] == "file" and expected["locked"] == ("dir", 0o555)
    assert exact_tree_of(tmp_path / "out") == expected
    files = sum(v[0] == "file" for v in expected.values())
    runs = sorted(_run_of(line) for line in _tars(recorder))
    assert len(runs) == parallel.workers_for(files) > 1 and _file_gets(recorder) == []
    manifest = json.loads(urllib.request.urlopen(
        f"{many.server.url}/artifacts/client-many/{many.build_id}/").read())
    kinds = [e["type"] for e in manifest["entries"]]
    assert runs[0][0] == kinds.index("file") and runs[-1][1] == len(kinds) - kinds[::-1].index("file")
    # one after another, and between two only entries that are not files (made by a process)
    assert all(a[1] <= b[0] and "file" not in kinds[a[1]:b[0]]
               for a, b in zip(runs, runs[1:], strict=False)), runs
    assert _manifest_gets(recorder) == [
        f"GET /artifacts/{PROJECT}/{many.build_id}/?form=columns"]


def _run_of(request_line: str) -> tuple[int, int]:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request_line.split()[1]).query)
    return int(query["start"][0]), int(query["stop"][0])


def test_a_tampered_stream_fails_and_leaves_the_target_untouched(many, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    proxy = TamperingProxy(port_of(many.server.url), b"A" * 16, b"A" * 15 + b"B")
    try:
        r = many(target, proxy.port)
    finally:
        proxy.close()
    assert proxy.tampered == 1
    assert r.returncode == 6, r.stderr
    assert "artifact aaaa.txt: BLAKE3" in r.stderr and "Traceback" not in r.stderr, r.stderr
    _untouched(target, tmp_path)


def test_a_cut_stream_resumes_and_the_result_is_exact(many, tmp_path):
    recorder = RecordingProxy(port_of(many.server.url))
    # every connection (the stream's, and the Range requests after it) drops after 4 MB, 3 times
    cutter = CuttingProxy(recorder.port, cut_after=4 * 1024 * 1024, cuts=3)
    try:
        r = many(tmp_path / "out", cutter.port)
    finally:
        cutter.close()
        recorder.close()
    assert r.returncode == 0, r.stderr
    assert cutter.cuts_done == 3
    assert exact_tree_of(tmp_path / "out") == exact_tree_of(many.artifacts)
    streams = [_run_of(line) for line in _tars(recorder)]
    for stop in {stop for _, stop in streams}:  # each run's streams pick up further on
        starts = [start for start, end in streams if end == stop]
        assert starts == sorted(set(starts)), streams
    assert len(streams) > len({stop for _, stop in streams}), streams  # something resumed


def test_a_stream_that_keeps_breaking_gives_up_and_leaves_the_target_untouched(many, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    cutter = CuttingProxy(port_of(many.server.url), cut_after=200_000, cuts=1000)
    try:
        r = many(target, cutter.port)
    finally:
        cutter.close()
    assert r.returncode == 6, r.stderr
    assert "failed after 4 attempts: the connection broke; the target was left untouched" \
        in r.stderr and "Traceback" not in r.stderr, r.stderr
    _untouched(target, tmp_path)


def test_a_refetch_moves_only_what_changed(many, tmp_path):
    target = tmp_path / "out"
    assert many(target).returncode == 0
    before = inodes_of(target)
    (target / "pkg3" / "lib" / "f1.js").write_text("changed by hand")
    (target / "pkg4" / "lib" / "deep" / "f20.js").unlink()
    os.chmod(target / "run.sh", 0o700)
    (target / "mine.txt").write_text("not from the build")
    changed = {"pkg3/lib/f1.js", "pkg4/lib/deep/f20.js", "run.sh"}

    recorder = RecordingProxy(port_of(many.server.url))
    try:
        r = many(target, recorder.port)
    finally:
        recorder.close()
    assert r.returncode == 0, r.stderr
    expected = exact_tree_of(many.artifacts)
    assert exact_tree_of(target) == {**expected, "mine.txt": ("file", 0o644, expected_sha(target))}
    after = inodes_of(target)
    assert {p for p in before if before[p] != after[p]} == changed  # the rest never moved
    assert sorted(line.rsplit("/", 1)[-1] for line in _file_gets(recorder)) == [
        "f1.js", "f20.js", "run.sh"]
    assert _tars(recorder) == []

    # --clear-target: what the build did not make goes, what is equal stays where it is
    r = many(target, None, "--clear-target")
    assert r.returncode == 0, r.stderr
    assert exact_tree_of(target) == expected
    assert inodes_of(target) == {p: i for p, i in after.items() if p != "mine.txt"}


def test_a_refetch_into_an_unchanged_target_only_asks_whether_the_manifest_changed(many,
                                                                                 tmp_path):
    target = tmp_path / "out"
    assert many(target).returncode == 0
    before = inodes_of(target)
    recorder = RecordingProxy(port_of(many.server.url))
    try:
        r = many(target, recorder.port)
        assert r.returncode == 0, r.stderr
        assert [line.split("?")[0] for line in recorder.request_lines()] == [
            "POST /jobs", f"GET /artifacts/{PROJECT}/{many.build_id}/"]
        assert b"If-None-Match" in recorder.sent
        assert inodes_of(target) == before and exact_tree_of(target) == exact_tree_of(many.artifacts)

        # a directory's mode changed: the target is looked at as a whole again, and mended
        os.chmod(target / "pkg1", 0o700)
        recorder.sent.clear()
        r = many(target, recorder.port)
        assert r.returncode == 0, r.stderr
        assert len(_manifest_gets(recorder)) == 2  # answered 304, then the whole manifest
        assert _tars(recorder) == [] and _file_gets(recorder) == []
        assert exact_tree_of(target) == exact_tree_of(many.artifacts)
    finally:
        recorder.close()


def test_states_of_targets_that_are_gone_are_pruned(tmp_path, monkeypatch):
    from mistry_client import target_state

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    for target in (kept, gone):
        target.mkdir()
        (target / "f").write_text("x")
        manifest = Manifest.of({"entries": [{"path": "f", "type": "file", "size": 1,
                                             "sha256": "0"}]})
        target_state.record(target, manifest, {}, set(), '"tag"', 0o777)
    folder = target_state.state_folder()
    old = folder / "0123456789abcdef0123456789abcdef.json"  # a version-1 state
    old.write_text(json.dumps({"v": 1, "target": str(kept), "files": {"x": ["0"] * 6}}))
    (gone / "f").unlink()
    gone.rmdir()

    def states():
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    target_state.prune(folder)  # pruned just now (when the states were written): nothing goes
    assert len(states()) == 3
    target_state.prune(folder, now=time.time() + target_state.PRUNE_EVERY + 1)
    assert states() == [target_state.state_file(kept).name]
    assert target_state.load(kept).manifest == '"tag"'
    target_state.prune(folder, now=time.time() + target_state.KEEP_FOR + 2 * target_state.PRUNE_EVERY)
    assert states() == []


def test_the_state_reads_back_as_written_and_a_damaged_one_is_none(tmp_path, monkeypatch):
    from mistry_client import target_state

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / "t"
    (target / "d\udc80").mkdir(parents=True)  # a name that is not UTF-8
    (target / "d\udc80" / "f").write_text("x")
    os.symlink("f", target / "d\udc80" / "l")
    entries = Manifest.of({"entries": [{"path": "d\udc80", "type": "dir", "mode": 0o750},
                                       {"path": "d\udc80/f", "type": "file", "size": 1,
                                        "sha256": "ab"},
                                       {"path": "d\udc80/l", "type": "symlink", "target": "f"}]})
    target_state.record(target, entries, {}, set(), '"tag"', 0o777)
    state = target_state.load(target)
    f_sig = target_state.signature(os.lstat(target / "d\udc80" / "f"))
    assert (state.manifest, state.mode_mask, state.dirs, list(state.dir_modes), state.links) == (
        '"tag"', 0o777, ["d\udc80"], [0o750], ["d\udc80/l"])
    assert state.recorded_files() == {"d\udc80/f": ["ab", *f_sig]}
    assert not state.unchanged(target)  # the directory is 0o755 here, not the manifest's 0o750
    os.chmod(target / "d\udc80", 0o750)
    assert state.unchanged(target)
    os.utime(target / "d\udc80" / "f", ns=(0, 0))  # (a time of its own: the clock's may not move)
    assert not state.unchanged(target)

    path = target_state.state_file(target)
    whole = path.read_bytes()
    for damaged in (whole[:-3], whole + b"x", whole.replace(b'"v": 2', b'"v": 3'), b"", b"{}\n"):
        path.write_bytes(damaged)
        assert target_state.load(target) is None
    (target / "d\udc80" / "l").unlink()  # an entry missing: no tag recorded, so no shortcut
    target_state.record(target, entries, {}, set(), '"tag"', 0o777)
    assert target_state.load(target).manifest is None


def test_a_refetch_without_the_state_file_checks_by_content(many, tmp_path):
    target = tmp_path / "out"
    assert many(target).returncode == 0
    before = inodes_of(target)
    for state in (tmp_path / "cache").rglob("*.state"):
        state.unlink()
    (target / "pkg0" / "lib" / "f2.js").write_bytes(b"x" * (target / "pkg0" / "lib" /
                                                           "f2.js").stat().st_size)
    assert many(target).returncode == 0
    assert exact_tree_of(target) == exact_tree_of(many.artifacts)
    after = inodes_of(target)
    assert {p for p in before if before[p] != after[p]} == {"pkg0/lib/f2.js"}


def expected_sha(target) -> str:
    import hashlib

    return hashlib.sha256((target / "mine.txt").read_bytes()).hexdigest()


def test_a_busy_stream_pool_is_waited_out_not_replaced_by_a_get_per_file(start_server, tmp_path):
    """Every artifact stream slot is taken (two, with 8 request threads) by readers that do not
    read: the client's streams are answered 503 + Retry-After, and it asks again when told,
    instead of falling back to one GET per file; the holders let go after 3 s."""
    server = start_server(projects=(PROJECT, "client-big"), http_threads=8)
    many_id = server.build(PROJECT)["ID"]
    big_id = server.build("client-big")["ID"]
    # the manifest (in columns, as the client asks) is computed now (a cached one takes no
    # slot): the streams are what waits
    assert requests.get(f"{server.url}/artifacts/{PROJECT}/{many_id}/?form=columns", timeout=30).ok
    holders = []
    for _ in range(2):  # a tar of 100 MB, not read: its stream waits on a full socket
        s = socket.create_connection(("127.0.0.1", port_of(server.url)))
        s.sendall(f"GET /artifacts/client-big/{big_id}.tar?start=0 HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{port_of(server.url)}\r\n\r\n".encode())
        holders.append(s)
    wait_for(lambda: 'mistryd_request_slots_in_use{kind="artifacts"} 2.0' in
             requests.get(f"{server.url}/metrics", timeout=10).text, timeout=30)
    release = threading.Timer(3.0, lambda: [shut(s) for s in holders])
    release.start()
    recorder = RecordingProxy(port_of(server.url))
    try:
        r = run_mistry(["build", "--project", PROJECT, "-t", str(tmp_path / "out")],
                       port=recorder.port, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    finally:
        release.join()
        recorder.close()
    assert r.returncode == 0, r.stderr
    artifacts = server.build_path / PROJECT / "ready" / many_id / "data" / "artifacts"
    assert exact_tree_of(tmp_path / "out") == exact_tree_of(artifacts)
    streams = [_run_of(line) for line in _tars(recorder)]
    assert len(streams) > len(set(streams)), streams  # a run was asked for again: it waited
    assert _file_gets(recorder) == []


class _ServerBeforeColumns(RecordingProxy):
    """What a server from before the manifest's columns form answers: its entries, whatever the
    query (the proxy drops `?form=columns` from the request line)."""

    def forward(self, data: bytes, to_client: bool, sent: int) -> tuple[bytes, bool]:
        if not to_client:
            data = data.replace(b"/?form=columns HTTP/1.1\r\n", b"/ HTTP/1.1\r\n")
        return super().forward(data, to_client, sent)


def test_a_server_that_sends_the_manifest_as_entries_is_fetched_from_alike(many, tmp_path):
    older = _ServerBeforeColumns(port_of(many.server.url))
    try:
        target = tmp_path / "out"
        r = many(target, older.port)
        assert r.returncode == 0, r.stderr
        assert exact_tree_of(target) == exact_tree_of(many.artifacts)
        assert _manifest_gets(older) == [f"GET /artifacts/{PROJECT}/{many.build_id}/"]
        (target / "pkg1" / "lib" / "f0.js").write_text("changed")
        r = many(target, older.port)
        assert r.returncode == 0, r.stderr
        assert exact_tree_of(target) == exact_tree_of(many.artifacts)
    finally:
        older.close()
