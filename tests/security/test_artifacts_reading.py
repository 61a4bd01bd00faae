"""Reading a finished build's artifacts over HTTP when the build was hostile.

Everything under a build's data/ was written by code the build ran: the artifacts folder itself may
be a link to /etc or /, entries may be links out, FIFOs, sockets or devices, the tree may be huge
or deep, and GC or a tamperer may change files while a .tar is being sent. The first half drives
real hostile Docker builds through the real HTTP server; the second tests `mistryd.safe_tree` on
real files in temporary folders (devices need mknod, which a build container cannot do).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import tarfile
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest
import requests
from support import TEST_PROJECTS

from mistryd import leases, safe_tree
from mistryd.web import artifacts

TIMEOUT = (5, 20)  # a request that hangs on a FIFO or /proc/kmsg fails the test, not the suite


def _folder(server, info: dict) -> Path:
    return server.build_path / info["Project"] / "ready" / info["ID"]


def _base(server, info: dict) -> str:
    return f"{server.url}/artifacts/{info['Project']}/{info['ID']}"


def _refused(server, response: requests.Response, status: int = 404) -> str:
    """The response is a one-line JSON error naming the build, never a host path."""
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert str(server.build_path) not in response.text and "/etc" not in error
    return error


# --- what a hostile build leaves behind -----------------------------------------------------------
#
# The builder's sanitizer fails such builds and removes what it finds, but builds on disk from
# before it existed were never checked: the read side must be safe on its own. So each case runs
# the hostile project for real (the server's answer must be safe), and then replays the same
# build.sh in a real container against the data/ of a successful build, as a server without the
# sanitizer would have kept it.


def _replay_unsanitized(server, hostile_project: str) -> dict:
    """A successful build whose data/ the hostile project's build.sh then had its way with."""
    info = server.build("hello")
    assert info["ExitCode"] == 0, info
    data = _folder(server, info) / "data"
    owner = data.stat()
    script = TEST_PROJECTS / hostile_project / "build.sh"
    name = f"mistryd-test-replay-{uuid.uuid4().hex[:12]}"
    run = subprocess.run(
        ["docker", "run", "--rm", "--name", name, "--network", "none", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "--user", f"{owner.st_uid}:{owner.st_gid}",
         "-v", f"{data}:/data", "-v", f"{script}:/build.sh:ro", "debian:bookworm-slim",
         "sh", "/build.sh"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return info


@pytest.mark.parametrize("project, host_files", [
    ("sec-art-etc", ["shadow", "passwd", "hostname"]),
    ("sec-art-root", ["etc/shadow", "proc/kmsg", "proc/self/environ"]),
])
def test_an_artifacts_folder_replaced_by_a_link_serves_nothing(start_server, project, host_files):
    server = start_server(projects=(project, "hello"))
    hostile = server.build(project)
    replayed = _replay_unsanitized(server, project)
    assert (_folder(server, replayed) / "data" / "artifacts").is_symlink()
    for info in (hostile, replayed):
        base = _base(server, info)
        for suffix in ["/", ".tar"] + [f"/{name}" for name in host_files]:
            error = _refused(server, requests.get(base + suffix, timeout=TIMEOUT))
            assert f"{info['Project']}/{info['ID']}" in error, error
    error = _refused(server, requests.get(f"{_base(server, replayed)}/", timeout=TIMEOUT))
    assert "data/artifacts is missing or not a real directory" in error, error


def test_a_data_folder_replaced_by_a_link_serves_nothing(start_server):
    """An old build on disk whose data/ is a link to /etc (a build cannot do this itself: /data
    is its mount point; a tampered or restored folder can)."""
    server = start_server(projects=("hello",))
    info = server.build("hello")
    data = _folder(server, info) / "data"
    data.rename(data.with_name("data.real"))
    data.symlink_to("/etc")
    base = _base(server, info)
    for suffix in ("/", ".tar", "/shadow", "/artifacts/out.txt", "/out.txt"):
        _refused(server, requests.get(base + suffix, timeout=TIMEOUT))


def test_a_build_refused_by_the_sanitizer_is_not_served(start_server):
    """Its record keeps ExitCode 0 (the container did exit 0) but its Status is failed."""
    server = start_server(projects=("sec-art-etc",))
    info = server.build("sec-art-etc")
    assert info["Status"] != "succeeded"
    for suffix in ("/", ".tar", "/shadow"):
        error = _refused(server, requests.get(_base(server, info) + suffix, timeout=TIMEOUT))
        assert "no finished successful build" in error


# --- hostile entries inside the artifacts --------------------------------------------------------


def test_links_out_are_listed_as_links_and_special_files_are_never_read(start_server):
    server = start_server(projects=("sec-art-links", "hello"))
    assert server.build("sec-art-links")["ExitCode"] == 0
    info = _replay_unsanitized(server, "sec-art-links")
    art = _folder(server, info) / "data" / "artifacts"
    assert stat.S_ISFIFO(os.lstat(art / "fifo").st_mode) and stat.S_ISSOCK(os.lstat(art / "sock").st_mode)
    base = _base(server, info)

    manifest = requests.get(f"{base}/", timeout=TIMEOUT).json()
    entries = {e["path"]: e for e in manifest["entries"]}
    assert set(entries) == {"etc-dir", "fine.txt", "inner-link", "out.txt", "relative-shadow",
                            "shadow", "sub", "sub/inner.txt"}
    assert entries["shadow"]["type"] == "symlink" and entries["shadow"]["target"] == "/etc/shadow"
    assert entries["etc-dir"] == {**entries["etc-dir"], "type": "symlink", "target": "/etc"}
    assert [e["path"] for e in manifest["entries"]] == sorted(entries)
    columns = requests.get(f"{base}/?form=columns", timeout=TIMEOUT).json()
    assert columns["path"] == [e["path"] for e in manifest["entries"]]
    assert columns["target"] == [e.get("target", "") for e in manifest["entries"]]

    for name in ("shadow", "relative-shadow", "etc-dir/shadow", "etc-dir/passwd", "fifo", "sock"):
        _refused(server, requests.get(f"{base}/{name}", timeout=TIMEOUT))
    assert requests.get(f"{base}/inner-link", timeout=TIMEOUT).content == b"inner\n"

    body = requests.get(f"{base}.tar", timeout=TIMEOUT).content
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("sub/inner.txt").read() == b"inner\n"
    assert set(members) == set(entries)
    assert members["shadow"].issym() and members["shadow"].linkname == "/etc/shadow"
    assert b"root:" not in body  # no line of the host's shadow or passwd


# --- bounds ---------------------------------------------------------------------------------------


def test_a_tree_nested_too_deep_gets_no_manifest_and_no_tar(start_server):
    server = start_server(projects=("sec-art-deep",))
    info = server.build("sec-art-deep")
    assert info["ExitCode"] == 0, info
    base = _base(server, info)
    # the second manifest request answers from the cached refusal; the columns are refused too
    for suffix in ("/", ".tar", "/", "/?form=columns"):
        error = _refused(server, requests.get(base + suffix, timeout=TIMEOUT), status=422)
        assert f"sec-art-deep/{info['ID']}" in error and "128 levels" in error and "rsync" in error
    deep = "/".join(["d"] * 140) + "/bottom.txt"
    assert requests.get(f"{base}/{deep}", timeout=TIMEOUT).content == b"bottom\n"


def test_a_tree_with_too_many_entries_gets_no_manifest(start_server, monkeypatch):
    server = start_server(projects=("sec-art-many",))
    info = server.build("sec-art-many")
    base = _base(server, info)
    monkeypatch.setattr(artifacts, "MAX_ENTRIES", 1000)  # the real limit is 1,000,000 entries
    for suffix in ("/", ".tar"):
        error = _refused(server, requests.get(base + suffix, timeout=TIMEOUT), status=422)
        assert "more than 1000 artifact entries" in error
    monkeypatch.undo()  # back to the real limit: the refusal is not kept past a change
    r = requests.get(f"{base}/", timeout=TIMEOUT)
    assert r.status_code == 200 and len(r.json()["entries"]) == 100_001


def test_a_cached_manifest_is_streamed_not_loaded(start_server):
    server = start_server(projects=("sec-art-many",))
    info = server.build("sec-art-many")
    url = f"{_base(server, info)}/"
    first = requests.get(url, timeout=TIMEOUT)
    assert first.status_code == 200 and int(first.headers["Content-Length"]) == len(first.content)
    size = len(first.content)
    assert size > 30_000_000  # 100,000 entries

    digest, received = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        with requests.get(url, stream=True, timeout=TIMEOUT) as r:
            for chunk in r.iter_content(1 << 16):
                digest.update(chunk)
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size and digest.hexdigest() == hashlib.sha256(first.content).hexdigest()
    # loading the manifest would take several times its size; it is sent from its file on disk
    # (waitress reads it in chunks as large as the socket's send buffer: a few MB)
    assert peak < size // 3, f"serving a {size} byte manifest took {peak} bytes"


# --- a tar that cannot be finished as announced ----------------------------------------------------


def _start_stream(url: str) -> tuple[requests.Response, object]:
    r = requests.get(url, stream=True, timeout=TIMEOUT)
    assert r.status_code == 200, r.text[:300]
    chunks = r.iter_content(1 << 20)
    next(chunks)  # the server is now inside big.bin, 128 MB before z.txt
    return r, chunks


def test_a_tar_whose_files_change_mid_stream_is_cut_not_finished_short(start_server):
    server = start_server(projects=("sec-art-tar",))
    info = server.build("sec-art-tar")
    folder = _folder(server, info)
    z = folder / "data" / "artifacts" / "z.txt"
    url = f"{_base(server, info)}.tar"
    # the first .tar request starts keeping the build's tar in the background; once kept, later
    # requests are sent from that snapshot, which no change to the files can reach. A folder in its
    # place keeps none, so that every request here streams from the files.
    (folder / "artifacts.tar").mkdir()

    def vanish():
        z.unlink()

    def become_a_fifo():
        z.unlink()
        os.mkfifo(z)

    def change_size():
        z.write_text("a longer line\n")

    for tamper in (vanish, become_a_fifo, change_size):
        r, chunks = _start_stream(url)
        tamper()
        with r, pytest.raises(requests.exceptions.ChunkedEncodingError):
            for _ in chunks:
                pass
        z.unlink(missing_ok=True)
        z.write_text("last\n")  # as the manifest says: the next tar is whole again

    body = requests.get(url, timeout=TIMEOUT).content
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("z.txt").read() == b"last\n"


def _wait_until_evictable(folder: Path) -> None:
    """The server releases its lease when it closes the response, a moment after the last byte."""
    deadline = time.monotonic() + 60  # a bound for a busy machine, not a speed check
    while True:
        with leases.evicting(folder) as free:
            if free:
                return
        assert time.monotonic() < deadline, "the server kept its lease after the response ended"
        time.sleep(0.02)


def test_gc_cannot_take_a_build_while_a_tar_or_a_file_is_being_sent(start_server):
    server = start_server(projects=("sec-art-tar",))
    info = server.build("sec-art-tar")
    folder = _folder(server, info)
    for suffix in (".tar", "/big.bin"):
        r, _ = _start_stream(_base(server, info) + suffix)
        with leases.evicting(folder) as free:
            assert free is False
        r.close()
        _wait_until_evictable(folder)

    # every other way an answer can end gives the lease back too
    base = _base(server, info)
    etag = requests.head(f"{base}/z.txt", timeout=TIMEOUT).headers["ETag"]
    assert requests.get(f"{base}/z.txt", headers={"If-None-Match": etag},
                        timeout=TIMEOUT).status_code == 304
    assert requests.get(f"{base}/z.txt", headers={"Range": "bytes=99-"},
                        timeout=TIMEOUT).status_code == 416
    assert requests.get(f"{base}/z.txt", headers={"Range": "bytes=1-2"},
                        timeout=TIMEOUT).content == b"as"
    for suffix in ("/", ".tar", "/big.bin"):
        assert requests.head(base + suffix, timeout=TIMEOUT).status_code == 200
    _wait_until_evictable(folder)


def test_expensive_requests_beyond_the_pool_answer_503(start_server):
    server = start_server(projects=("sec-art-tar",), http_threads=4)  # a pool of one slot
    info = server.build("sec-art-tar")
    base = _base(server, info)
    r, _ = _start_stream(f"{base}.tar")
    busy = requests.get(f"{base}.tar", timeout=TIMEOUT)
    error = _refused(server, busy, status=503)
    assert busy.headers["Retry-After"].isdigit() and "try again" in error
    assert requests.get(f"{base}/", timeout=TIMEOUT).status_code == 200  # cached: no slot needed
    r.close()
    deadline = time.monotonic() + 60  # a bound for a busy machine, not a speed check
    while (status := requests.get(f"{base}.tar", timeout=TIMEOUT).status_code) == 503:
        assert time.monotonic() < deadline, "the slot was never given back"
        time.sleep(0.02)
    assert status == 200


# --- safe_tree on real files ------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """tmp_path/root with files, links in and out, a FIFO, a socket and two devices."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a-b").write_text("dash\n")
    (root / "a" / "b" / "deep.txt").write_text("deep\n")
    (root / "top.txt").write_text("top\n")
    (root / "inside").symlink_to("a/b/deep.txt")
    (root / "up-and-in").symlink_to("a/../a/b/deep.txt")
    (root / "out").symlink_to("../secret.txt")
    (root / "abs").symlink_to("/etc/passwd")
    (root / "dir-link").symlink_to("a")
    (root / "loop").symlink_to("loop")
    (tmp_path / "secret.txt").write_text("secret\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # reading it never ends
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    yield root
    sock.close()


def _fd(path: Path) -> int:
    return os.open(path, safe_tree.DIR_FLAGS)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_walk_lists_links_as_links_skips_special_files_and_sorts_by_path(tree):
    fd = _fd(tree)
    try:
        found = list(safe_tree.walk(fd, max_entries=100, max_depth=10))
    finally:
        os.close(fd)
    paths = [f.path for f in found]
    assert paths == sorted(paths) == ["a", "a-b", "a/b", "a/b/deep.txt", "abs", "dir-link",
                                      "inside", "loop", "out", "top.txt", "up-and-in"]
    by_path = {f.path: f for f in found}
    assert by_path["abs"].type == "symlink" and by_path["abs"].target == "/etc/passwd"
    assert by_path["dir-link"].type == "symlink"  # never entered
    assert by_path["top.txt"].type == "file" and by_path["top.txt"].size == 4


def test_walk_is_bounded_and_closes_its_descriptors(tree):
    (tree / "many").mkdir()
    for i in range(50):
        (tree / "many" / str(i)).touch()
    deep = tree / "deep"
    deep.joinpath(*["d"] * 12).mkdir(parents=True)
    fd = _fd(tree)
    before = _open_fds()
    try:
        with pytest.raises(safe_tree.TreeTooLarge):
            list(safe_tree.walk(fd, max_entries=40, max_depth=100))
        with pytest.raises(safe_tree.TreeTooLarge, match="deeper than 8 levels"):
            list(safe_tree.walk(fd, max_entries=1000, max_depth=8))
        assert len(list(safe_tree.walk(fd, max_entries=1000, max_depth=100))) > 60
        walker = safe_tree.walk(fd, max_entries=1000, max_depth=100)
        next(walker)
        walker.close()  # a client that goes away mid-walk
        assert _open_fds() == before
    finally:
        os.close(fd)


def test_open_file_never_opens_special_files_or_leaves_the_tree(tree):
    fd = _fd(tree)
    try:
        for name in ("fifo", "zero", "null", "sock", "abs", "out", "loop", "dir-link", "a",
                     "missing", "a/b/deep.txt/x"):
            for follow in (False, True):
                with pytest.raises(safe_tree.NotFoundInTree):
                    os.close(safe_tree.open_file(fd, name, follow_inner_links=follow))
        with pytest.raises(safe_tree.NotFoundInTree):
            safe_tree.open_file(fd, "inside")  # links are not followed unless asked
        for name in ("inside", "up-and-in", "dir-link/b/deep.txt", "a/b/deep.txt"):
            file_fd = safe_tree.open_file(fd, name, follow_inner_links=True)
            with os.fdopen(file_fd, "rb") as f:
                assert f.read() == b"deep\n", name
    finally:
        os.close(fd)


def test_open_dir_refuses_a_linked_component(tree, tmp_path):
    (tmp_path / "build" / "data").mkdir(parents=True)
    (tmp_path / "build" / "data" / "artifacts").symlink_to(tree)
    fd = _fd(tmp_path / "build")
    try:
        with pytest.raises(safe_tree.NotARealDirectory):
            safe_tree.open_dir(fd, "data/artifacts")
        os.close(safe_tree.open_dir(fd, "data"))
    finally:
        os.close(fd)


def test_file_opener_reuses_directories_and_refuses_links(tree):
    fd = _fd(tree)
    try:
        with safe_tree.FileOpener(fd) as opener:
            for name in ("a/b/deep.txt", "top.txt", "a/b/deep.txt"):
                os.close(opener.open(name))
            for name in ("dir-link/b/deep.txt", "inside", "fifo", "zero"):
                with pytest.raises(safe_tree.NotFoundInTree):
                    opener.open(name)
    finally:
        os.close(fd)


def test_reading_a_file_that_shrank_fails(tree):
    fd = os.open(tree / "top.txt", os.O_RDONLY)
    try:
        with pytest.raises(safe_tree.TreeChanged, match="shrank"):
            safe_tree.digests_of(fd, 10, "top.txt")
    finally:
        os.close(fd)
