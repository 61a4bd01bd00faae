"""The kept tar: the first `.tar` of a build is streamed from its files and written beside it in the
background (`artifacts.tar` and `artifacts.tar.index`); later requests, whole or a run of entries
(`?start=&stop=`), are ranges of that file. Both paths must give the very same bytes."""

from __future__ import annotations

import io
import json
import tarfile

import requests
from support import wait_for

TIMEOUT = (5, 60)
RUNS = [(None, None), (0, None), (0, 2), (1, 3), (2, None), (3, 4), (99, None), (2, 2)]


def _url(server, info: dict, start: int | None, stop: int | None) -> str:
    query = "&".join(f"{k}={v}" for k, v in (("start", start), ("stop", stop)) if v is not None)
    return f"{server.url}/artifacts/{info['Project']}/{info['ID']}.tar" + (f"?{query}" if query else "")


def _fetch_all(server, info: dict) -> dict[tuple, tuple[bytes, str | None]]:
    answers = {}
    for run in RUNS:
        r = requests.get(_url(server, info, *run), timeout=TIMEOUT)
        assert r.status_code == 200, r.text[:300]
        answers[run] = (r.content, r.headers.get("Content-Length"))
    return answers


def test_a_kept_tar_sends_the_bytes_of_the_stream_whole_and_in_runs(start_server):
    server = start_server(projects=("client-tree",))
    info = server.build("client-tree")
    folder = server.build_path / "client-tree" / "ready" / info["ID"]
    kept, index = folder / "artifacts.tar", folder / "artifacts.tar.index"

    kept.mkdir()  # nothing can be kept yet: every answer below is streamed from the files
    streamed = _fetch_all(server, info)
    assert all(length is None for _, length in streamed.values())  # chunked: written as sent
    whole = streamed[(None, None)][0]
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        names = tar.getnames()
    assert "top.txt" in names and "a/b/deep.txt" in names and len(names) > 4
    assert streamed[(0, None)][0] == whole
    assert streamed[(99, None)][0] == b"\0" * 1024  # past the last entry: the end blocks only
    assert streamed[(2, 2)][0] == b""

    kept.rmdir()
    requests.get(_url(server, info, None, None), timeout=TIMEOUT).raise_for_status()
    wait_for(index.exists, timeout=60)
    assert kept.is_file()
    head = json.loads(index.read_bytes().split(b"\n", 1)[0])
    assert head["entries"] == len(names) and head["size"] == len(whole)

    for run, (body, _) in streamed.items():
        r = requests.get(_url(server, info, *run), timeout=TIMEOUT)
        assert r.status_code == 200
        assert r.headers.get("Content-Length") == str(len(body)), run  # a range of the kept file
        assert r.content == body, run
    # a run ends where the next one starts: the runs a parallel client asks for add up to the whole
    assert streamed[(0, 2)][0] + streamed[(2, None)][0] == whole


def _kept_anew(server, info: dict, index, broken: bytes) -> bool:
    """Asked again while the last keeping is still finishing, the server starts no other: ask until
    the index is whole again."""
    requests.get(_url(server, info, None, None), timeout=TIMEOUT).raise_for_status()
    return index.read_bytes() != broken


def test_a_stale_or_broken_index_is_never_served(start_server):
    server = start_server(projects=("client-tree",))
    info = server.build("client-tree")
    folder = server.build_path / "client-tree" / "ready" / info["ID"]
    index = folder / "artifacts.tar.index"
    whole = requests.get(_url(server, info, None, None), timeout=TIMEOUT).content
    wait_for(index.exists, timeout=60)

    head, offsets = index.read_bytes().split(b"\n", 1)
    stale = json.loads(head)
    stale["stamp"]["StartedAt"] = "an earlier build of the same id"
    for broken in (json.dumps(stale).encode() + b"\n" + offsets,  # another build's tar
                   head + b"\n" + offsets[:-8],  # an offset short
                   b"not json\n" + offsets):
        index.write_bytes(broken)
        r = requests.get(_url(server, info, None, None), timeout=TIMEOUT)
        assert r.status_code == 200 and "Content-Length" not in r.headers  # streamed again
        assert r.content == whole
        wait_for(lambda b=broken: _kept_anew(server, info, index, b), timeout=60)
    (folder / "artifacts.tar").write_bytes(b"short")  # a tar of another size than its index says
    r = requests.get(_url(server, info, None, None), timeout=TIMEOUT)
    assert "Content-Length" not in r.headers and r.content == whole
