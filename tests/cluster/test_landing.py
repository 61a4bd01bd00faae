"""What a remote builder sends is hostile until checked (mistryd/landing.py, web/builder_api.py):
a real central server (in-process, building nothing itself) on a real redis-server, and this test
playing the builder: it takes the job from Redis and talks to the central server over HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import ADMIN, BUILD, BUILDER, bearer

from mistryd.queue import JobKey
from mistryd.queue.redis import RedisQueue
from mistryd.remote.transfer import Central

pytestmark = pytest.mark.docker


@pytest.fixture
def taken(central, redis_server):
    """A job submitted to the central server and taken by `remote-0` (this test)."""
    r = requests.post(f"{central.url}/jobs?async", headers=bearer(BUILD),
                      json={"project": "cache", "params": {"v": "1"}, "group": "g"}, timeout=30)
    assert r.status_code == 201, r.text
    queue = RedisQueue(redis_server.url)
    lease = queue.take("remote-0", timeout=10)
    assert lease is not None and lease.key == JobKey("cache", r.json()["id"])
    yield lease
    queue.close()


def _url(central, kind: str, lease, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"builder": lease.builder, "token": lease.token,
                                             **params}.items())
    return f"{central.url}/api/builder/{kind}/{lease.key.project}/{lease.key.id}?{query}"


def _build_tar(lease, extra=None, status: str = "succeeded") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes = b"", kind=tarfile.REGTYPE, mode: int = 0o644,
                linkname: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        record = {"ID": lease.key.id, "Project": lease.key.project, "Params": {"v": "1"},
                  "Group": "g", "Path": "/elsewhere", "URL": "", "StartedAt": "",
                  "Status": status, "ExitCode": 0}
        add("build_info.json", json.dumps(record).encode())
        add("out.log", b"hello\n")
        for folder in ("data", "data/artifacts", "data/cache", "data/params"):
            add(folder, kind=tarfile.DIRTYPE, mode=0o755)
        add("data/artifacts/result.txt", b"built elsewhere\n")
        add("data/cache/count", b"1\n")
        for args in extra or ():
            add(*args[:2], **args[2]) if len(args) > 2 else add(*args)
    return out.getvalue()


def _upload(central, lease, body: bytes, digest: str | None = None) -> requests.Response:
    auth = bearer(BUILDER)
    for start in range(0, len(body), 4096):
        r = requests.post(_url(central, "result", lease, offset=start), headers=auth,
                          data=body[start:start + 4096], timeout=30)
        assert r.status_code == 200, r.text
    land = _url(central, "result", lease, size=len(body),
                sha256=digest or hashlib.sha256(body).hexdigest()).replace("?", "/land?", 1)
    return requests.post(land, headers=auth, timeout=60)


def test_a_good_upload_lands_and_is_served(central, taken):
    details = Central(central.url, BUILDER).start(taken)
    assert details.request["params"] == {"v": "1"} and details.cache is None
    r = _upload(central, taken, _build_tar(taken))
    assert r.status_code == 200 and r.json() == {"status": "succeeded"}, r.text
    view = requests.get(f"{central.url}/job/cache/{taken.key.id}",
                        headers={**bearer(ADMIN), "Accept": "application/json"}, timeout=10).json()
    assert view["Status"] == "succeeded" and view["BuildInfo"]["Builder"] == "remote"
    got = requests.get(f"{central.url}/artifacts/cache/{taken.key.id}/result.txt",
                       headers=bearer(ADMIN), timeout=10)
    assert got.text == "built elsewhere\n"
    # the group's cache is now the central server's to hand out
    tar = requests.get(f"{central.url}/api/builder/cache/cache/{taken.key.id}",
                       headers=bearer(BUILDER), timeout=10)
    names = tarfile.open(fileobj=io.BytesIO(tar.content)).getnames()
    assert "data/cache/count" in names and "build_info.json" in names
    assert not any(n.startswith("data/artifacts") for n in names)


def test_a_wrong_checksum_lands_nothing(central, taken):
    body = _build_tar(taken)
    r = _upload(central, taken, body, digest="0" * 64)
    assert r.status_code == 422 and "sha256" in r.json()["error"]
    view = requests.get(f"{central.url}/job/cache/{taken.key.id}",
                        headers={**bearer(ADMIN), "Accept": "application/json"}, timeout=10).json()
    assert view["Status"] in ("queued", "running")  # not served, still the builder's to finish
    r = _upload(central, taken, body)  # sent again, whole: it lands
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("extra, problem", [
    ([("../escape", b"x")], "outside"),
    ([("/etc/evil", b"x")], "outside"),
    ([("data/artifacts/link", b"", {"kind": tarfile.SYMTYPE, "linkname": "/etc"}),
      ("data/artifacts/link/passwd", b"x")], "outside"),
    ([("data/artifacts/hard", b"", {"kind": tarfile.LNKTYPE, "linkname": "../../etc/passwd"})],
     "outside"),
])
def test_a_hostile_tar_is_refused(central, taken, extra, problem):
    r = _upload(central, taken, _build_tar(taken, extra))
    assert r.status_code == 422, r.text
    assert problem in r.json()["error"]
    assert not (central.build_path / "cache" / "ready" / taken.key.id).exists()
    assert not list((central.build_path / ".mistryd" / "landing").glob("*/*"))  # nothing kept


def test_a_hard_link_through_a_link_out_touches_nothing_outside(central, taken):
    """`l -> DIR` then a hard link `h` => `l/secret`: with tarfile's `tar` filter alone this
    links, chowns and chmods a file of the central server's own file system."""
    outside = central.build_path.parent / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("not for builders\n")
    secret.chmod(0o600)
    before = secret.stat()
    extra = [("data/artifacts/l", b"", {"kind": tarfile.SYMTYPE, "linkname": str(outside)}),
             ("data/artifacts/h", b"", {"kind": tarfile.LNKTYPE,
                                        "linkname": "data/artifacts/l/secret", "mode": 0o644})]
    r = _upload(central, taken, _build_tar(taken, extra))
    assert r.status_code == 422 and "outside" in r.json()["error"], r.text
    after = secret.stat()
    assert (after.st_nlink, after.st_mode, after.st_uid) == \
        (1, before.st_mode, before.st_uid)
    assert not (central.build_path / "cache" / "ready" / taken.key.id).exists()


def test_setuid_bits_and_devices_are_defused(central, taken):
    extra = [("data/artifacts/suid", b"#!/bin/sh\n", {"mode": 0o4755}),
             ("data/artifacts/dev", b"", {"kind": tarfile.CHRTYPE})]
    r = _upload(central, taken, _build_tar(taken, extra))
    assert r.status_code == 200, r.text
    ready = central.build_path / "cache" / "ready" / taken.key.id / "data" / "artifacts"
    assert not (ready / "suid").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert not (ready / "dev").exists()


def test_pieces_at_the_wrong_offset_and_leases_not_held_are_refused(central, taken):
    auth = bearer(BUILDER)
    r = requests.post(_url(central, "log", taken, offset=0), headers=auth, data=b"one\n",
                      timeout=10)
    assert r.json() == {"offset": 4}
    r = requests.post(_url(central, "log", taken, offset=0), headers=auth, data=b"one\n",
                      timeout=10)
    assert r.status_code == 409 and "offset 4" in r.json()["error"]  # no duplicate
    with requests.get(f"{central.url}/log/cache/{taken.key.id}", headers=bearer(ADMIN),
                      stream=True, timeout=10) as log:  # followed as a local build's log
        first = next(line for line in log.iter_lines(decode_unicode=True)
                     if line.startswith("data:"))
    assert first == "data: one"
    stranger = taken.__class__(**{**taken.__dict__, "token": taken.token + 1})
    r = requests.post(_url(central, "log", stranger, offset=4), headers=auth, data=b"x",
                      timeout=10)
    assert r.status_code == 409 and "not held" in r.json()["error"]
    r = requests.post(_url(central, "log", taken, offset=4), headers=bearer(BUILD), data=b"x",
                      timeout=10)
    assert r.status_code == 403  # a build token is not a builder's


def test_a_landing_asked_twice_at_once_lands_once(central, taken):
    """A builder whose land call timed out asks again while the first still unpacks: the second
    waits for the first and is then told the job is not its any more."""
    extra = [(f"data/artifacts/f{n}", b"x" * 1000) for n in range(2000)]
    body = _build_tar(taken, extra)
    auth = bearer(BUILDER)
    for start in range(0, len(body), 1 << 19):
        r = requests.post(_url(central, "result", taken, offset=start), headers=auth,
                          data=body[start:start + (1 << 19)], timeout=30)
        assert r.status_code == 200, r.text
    land = _url(central, "result", taken, size=len(body),
                sha256=hashlib.sha256(body).hexdigest()).replace("?", "/land?", 1)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: requests.post(land, headers=auth, timeout=60), (1, 2)))
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    ready = central.build_path / "cache" / "ready" / taken.key.id / "data" / "artifacts"
    assert len(list(ready.iterdir())) == 2001
