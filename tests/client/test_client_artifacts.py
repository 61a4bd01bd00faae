"""The HTTP artifact endpoints and the client's download-verify-move."""

from __future__ import annotations

import filecmp
import hashlib
import http.client
import io
import json
import os
import tarfile

import requests
from client_helpers import port_of, run_mistry
from support import small_tmpfs

from mistryd.web.artifacts import COLUMNS_FILE, MANIFEST_FILE


def _raw_get(url: str, path: str) -> int:
    """GET with the path sent as is (requests would normalise `..` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_manifest_files_ranges_and_tar(start_server, tmp_path):
    server = start_server(projects=("client-tree",))
    info = server.build("client-tree")
    base = f"{server.url}/artifacts/client-tree/{info['ID']}"
    root = server.build_path / "client-tree" / "ready" / info["ID"] / "data" / "artifacts"

    manifest = requests.get(f"{base}/", timeout=30).json()
    entries = {e["path"]: e for e in manifest["entries"]}
    assert set(entries) == {"a", "a/b", "a/b/deep.txt", "absolute-link", "empty",
                            "escaping-link", "inside-link", "run.sh", "top.txt"}
    assert entries["run.sh"]["mode"] == 0o755 and entries["a/b/deep.txt"]["mode"] == 0o600
    assert entries["top.txt"]["sha256"] == _sha(root / "top.txt")
    assert entries["top.txt"]["size"] == 4
    assert entries["escaping-link"] == {**entries["escaping-link"], "type": "symlink",
                                        "target": "../../build_info.json"}
    assert (root.parent.parent / MANIFEST_FILE).is_file()  # cached beside build_info.json
    tag = requests.get(f"{base}/", timeout=30).headers["ETag"]
    same = requests.get(f"{base}/", headers={"If-None-Match": tag}, timeout=30)
    assert (same.status_code, same.content, same.headers["ETag"]) == (304, b"", tag)
    other = requests.get(f"{base}/", headers={"If-None-Match": '"another"'}, timeout=30)
    assert other.status_code == 200 and other.json() == manifest

    # the same manifest in columns (what `mistry` asks for), cached too, with the same ETag
    r = requests.get(f"{base}/?form=columns", timeout=30)
    assert r.status_code == 200 and r.headers["ETag"] == tag, r.text
    columns = r.json()
    assert (columns["project"], columns["id"], columns["count"], columns["total_size"]) == (
        "client-tree", info["ID"], len(manifest["entries"]), manifest["total_size"])
    for name in ("path", "type", "mode", "size", "mtime", "sha256", "blake3", "target"):
        assert columns[name] == [e.get(name, "") for e in manifest["entries"]], name
    assert (root.parent.parent / COLUMNS_FILE).is_file()
    same = requests.get(f"{base}/?form=columns", headers={"If-None-Match": tag}, timeout=30)
    assert (same.status_code, same.content) == (304, b"")
    assert requests.get(f"{base}/?form=columns", timeout=30).json() == columns  # from the cache
    r = requests.get(f"{base}/?form=rows", timeout=30)
    assert r.status_code == 400 and "entries or columns" in r.json()["error"]

    r = requests.get(f"{base}/a/b/deep.txt", timeout=30)
    assert r.status_code == 200 and r.content == b"deep\n"
    r = requests.get(f"{base}/top.txt", headers={"Range": "bytes=1-2"}, timeout=30)
    assert r.status_code == 206 and r.content == b"op"
    assert requests.get(f"{base}/inside-link", timeout=30).content == b"deep\n"

    body = io.BytesIO(requests.get(f"{base}.tar", timeout=30).content)
    with tarfile.open(fileobj=body) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("a/b/deep.txt").read() == b"deep\n"
    assert set(members) == set(entries)
    assert members["escaping-link"].issym() and members["run.sh"].mode == 0o755


def test_paths_that_escape_are_refused(start_server):
    server = start_server(projects=("client-tree",))
    info = server.build("client-tree")
    base = f"/artifacts/client-tree/{info['ID']}"
    assert _raw_get(server.url, f"{base}/top.txt") == 200
    for path in ("../../build_info.json", "..%2f..%2fbuild_info.json", "%2e%2e/out.log",
                 "a/../top.txt", "./top.txt", "escaping-link", "absolute-link", "a//b/deep.txt",
                 "empty", "missing.txt"):
        assert _raw_get(server.url, f"{base}/{path}") == 404, path
    assert _raw_get(server.url, "/artifacts/client-tree/..%2f..%2fetc/passwd") == 404
    assert _raw_get(server.url, f"/artifacts/..%2fclient-tree/{info['ID']}/") == 404


def test_only_finished_successful_builds_are_served(start_server):
    server = start_server(projects=("client-failing",))
    info = server.build("client-failing")
    assert info["ExitCode"] == 77
    for suffix in ("/", "/x", ".tar"):
        r = requests.get(f"{server.url}/artifacts/client-failing/{info['ID']}{suffix}",
                         timeout=30)
        assert r.status_code == 404 and "no finished successful build" in r.json()["error"]
    assert requests.get(f"{server.url}/artifacts/client-failing/{'0' * 64}/",
                        timeout=30).status_code == 404


def test_a_100_mb_artifact_arrives_byte_for_byte_or_not_on_a_full_disk(start_server, tmp_path):
    server = start_server(projects=("client-big",))
    # a target on a disk too small: a clear error, the target as it was, no staging folder left
    with small_tmpfs(tmp_path / "small", "16m") as disk:
        target = disk / "out"
        target.mkdir()
        (target / "keep.txt").write_text("mine")
        r = run_mistry(["build", "--project", "client-big", "-t", str(target)],
                       port=port_of(server.url))
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.splitlines() == [f"the artifacts could not be written to {target}: "
                                         "No space left on device"]
        _untouched(target, disk)

    out = tmp_path / "out"
    r = run_mistry(["build", "--project", "client-big", "-t", str(out), "--json-result"],
                   port=port_of(server.url))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    src = server.build_path / "client-big" / "ready" / info["ID"] / "data" / "artifacts"
    assert (out / "big.bin").stat().st_size == 100 * 1024 * 1024
    assert filecmp.cmp(src / "big.bin", out / "big.bin", shallow=False)
    assert (out / "sub" / "small.txt").read_text() == "small\n"


def _untouched(target, parent) -> None:
    assert sorted(os.listdir(target)) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    assert [p for p in os.listdir(parent) if p.startswith(".mistry-")] == []


def test_corrupt_or_truncated_artifacts_leave_the_target_untouched(start_server, tmp_path):
    server = start_server(projects=("client-tree",))
    port = port_of(server.url)
    r = run_mistry(["build", "--project", "client-tree", "--json-result", "-t",
                    str(tmp_path / "first")], port=port)
    assert r.returncode == 0, r.stderr  # the manifest (with the true sha256s) is cached now
    info = json.loads(r.stdout)
    art = server.build_path / "client-tree" / "ready" / info["ID"] / "data" / "artifacts"
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")

    (art / "top.txt").write_text("TOP\n")  # same size, other bytes
    r = run_mistry(["build", "--project", "client-tree", "-t", str(target), "--clear-target"],
                   port=port)
    assert r.returncode == 6 and "top.txt: BLAKE3" in r.stderr, r.stderr
    _untouched(target, tmp_path)

    (art / "top.txt").write_text("to")  # truncated
    r = run_mistry(["build", "--project", "client-tree", "-t", str(target)], port=port)
    assert r.returncode == 6 and "top.txt: got 2 bytes" in r.stderr, r.stderr
    _untouched(target, tmp_path)


def test_an_interrupted_download_resumes_or_leaves_the_target_untouched(
        start_server, cutting_proxy, tmp_path):
    server = start_server(projects=("client-big",))
    info = server.build("client-big")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    # the link drops twice in the middle of the 100 MB file: Range requests pick up the rest
    proxy = cutting_proxy(port_of(server.url), cut_after=30 * 1024 * 1024, cuts=2)
    r = run_mistry(["build", "--project", "client-big", "-t", str(target)], port=proxy.port)
    assert r.returncode == 0, r.stderr
    assert proxy.cuts_done == 2
    src = server.build_path / "client-big" / "ready" / info["ID"] / "data" / "artifacts"
    assert filecmp.cmp(src / "big.bin", target / "big.bin", shallow=False)

    # a link that always drops: the client gives up and the target stays as it was
    target2 = tmp_path / "out2"
    target2.mkdir()
    (target2 / "keep.txt").write_text("mine")
    proxy = cutting_proxy(port_of(server.url), cut_after=20 * 1024 * 1024, cuts=1000)
    r = run_mistry(["build", "--project", "client-big", "-t", str(target2)], port=proxy.port)
    assert r.returncode == 6, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == ["download of big.bin failed after 4 attempts: the connection "
                                     "broke; the target was left untouched"]
    _untouched(target2, tmp_path)


def test_a_manifest_cache_of_another_build_is_not_reused(start_server):
    """An incremental clone or a rebuild carries the old folder's cache file along."""
    server = start_server(projects=("hello",))
    info = server.build("hello")
    cache = server.build_path / "hello" / "ready" / info["ID"] / MANIFEST_FILE
    stale = {"stamp": {"v": 1, "ID": info["ID"], "StartedAt": "1999-01-01T00:00:00Z"},
             "entries": [{"path": "gone.txt", "type": "file", "size": 1, "sha256": "0",
                          "mode": 420, "mtime": 0}], "total_size": 1}
    cache.write_text(json.dumps(stale))
    r = requests.get(f"{server.url}/artifacts/hello/{info['ID']}/", timeout=30)
    assert [e["path"] for e in r.json()["entries"]] == ["out.txt"]
    assert json.loads(cache.read_text())["stamp"]["StartedAt"] == info["StartedAt"]


def test_a_rebuilt_build_has_another_manifest_tag(start_server):
    """A build made again under the same ID (after GC, say) may have other artifacts: the tag a
    client kept no longer matches, and the whole manifest comes."""
    server = start_server(projects=("hello",))
    info = server.build("hello")
    url = f"{server.url}/artifacts/hello/{info['ID']}/"
    tag = requests.get(url, timeout=30).headers["ETag"]
    build_info = server.build_path / "hello" / "ready" / info["ID"] / "build_info.json"
    rebuilt = {**json.loads(build_info.read_text()), "StartedAt": "2031-01-01T00:00:00Z"}
    build_info.write_text(json.dumps(rebuilt))
    r = requests.get(url, headers={"If-None-Match": tag}, timeout=30)
    assert r.status_code == 200 and [e["path"] for e in r.json()["entries"]] == ["out.txt"]
    assert r.headers["ETag"] != tag
