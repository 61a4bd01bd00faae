"""A remote builder's side of what it exchanges with the central server (mistryd/web/
builder_api.py): the job's details, its build context, a group's last cache, the live log and
the result, each piece at an offset so that a piece lost with the connection is sent again and
none twice. Connection errors and 5xx answers are retried with backoff (the central server may be
restarting); a 4xx is final: 409 means the lease is gone (LeaseLost), except for a piece at the
wrong offset, which is sent again from where the central server is."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

from ..errors import MistryError
from ..landing import hostile_member
from ..queue import Lease, LeaseLost

log = logging.getLogger("mistryd")
RETRY_FOR = 600.0  # seconds a builder keeps trying while the central server does not answer
PIECE = 1 << 20  # at most this many bytes per piece (and never more than max_body_bytes)
LOG_EVERY = 0.2  # seconds between two looks at a growing log
CONNECT_TIMEOUT = 10.0  # seconds: a central server that does not accept is retried sooner
READ_TIMEOUT = 300.0
UPLOAD_ATTEMPTS = 3
LAND_TIMEOUT = 3600.0  # landing unpacks and defuses the whole build before it answers


class CentralRefused(MistryError):
    status = 502


@dataclass
class JobDetails:
    request: dict
    fingerprint: str
    settings: dict
    cache: dict | None  # {"group", "id"} of the group's last good build, or None
    max_body_bytes: int


class Central:
    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.piece = PIECE

    def _call(self, method: str, path: str, lease: Lease | None = None,
              **kwargs: Any) -> requests.Response:
        params = dict(kwargs.pop("params", {}))
        if lease is not None:
            params.update(builder=lease.builder, token=lease.token)
        timeout = kwargs.pop("timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
        deadline = time.monotonic() + RETRY_FOR
        wait = 0.2
        while True:
            try:
                r = self.session.request(method, self.url + path, params=params,
                                         timeout=timeout, **kwargs)
            except requests.RequestException as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 500:
                    return r
                problem = f"{r.status_code} {r.text[:200]}"
            if time.monotonic() > deadline:
                raise CentralRefused(f"the central server {self.url} did not answer "
                                     f"{method} {path}: {problem}")
            log.warning("mistryd worker: %s %s: %s; trying again in %.1fs", method, path,
                        problem, wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)

    def _ok(self, r: requests.Response, lease: Lease | None = None) -> requests.Response:
        if r.status_code == 409 and lease is not None and _their_offset(r) is None:
            raise LeaseLost(lease)  # every other 409 of a job means the job is not ours now
        if r.status_code >= 400:
            raise CentralRefused(f"the central server refused: {r.status_code} {r.text[:300]}")
        return r

    # --- a job ------------------------------------------------------------------------------

    def start(self, lease: Lease) -> JobDetails:
        k = lease.key
        raw = self._ok(self._call("POST", f"/api/builder/jobs/{k.project}/{k.id}/start", lease),
                       lease).json()
        self.piece = max(4096, min(PIECE, int(raw.get("max_body_bytes", PIECE)) - 4096))
        return JobDetails(raw["request"], raw["fingerprint"], raw["settings"], raw["cache"],
                          raw.get("max_body_bytes", PIECE))

    def fetch_context(self, project: str, fingerprint: str, dest: Path) -> None:
        self._fetch_tree(f"/api/builder/context/{project}/{fingerprint}", dest)

    def fetch_cache(self, project: str, build_id: str, dest: Path) -> None:
        """A group's last good build as far as a next build needs it (its record and
        /data/cache), unpacked into the empty folder `dest` (the caller removes it when this
        fails)."""
        self._unpack(f"/api/builder/cache/{project}/{build_id}", dest)

    def _fetch_tree(self, path: str, dest: Path) -> None:
        """A tar stream unpacked into a new folder beside `dest`, then moved to `dest`: a
        broken stream leaves nothing behind."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            self._unpack(path, temp)
            os.chmod(temp, 0o755)
            os.replace(temp, dest)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _unpack(self, path: str, dest: Path) -> None:
        try:
            r = self._ok(self._call("GET", path, stream=True))
            with r, tarfile.open(fileobj=r.raw, mode="r|") as archive:
                archive.extractall(dest, filter=hostile_member)
        except (tarfile.TarError, OSError) as e:
            raise CentralRefused(f"{path} arrived broken: {e}") from None

    # --- pieces -------------------------------------------------------------------------------

    def send(self, lease: Lease, kind: str, f: IO[bytes], offset: int) -> int:
        """Everything of `f` from `offset` on, in pieces; the central server's size after."""
        k = lease.key
        while True:
            f.seek(offset)
            piece = f.read(self.piece)
            if not piece:
                return offset
            r = self._call("POST", f"/api/builder/{kind}/{k.project}/{k.id}", lease,
                           params={"offset": offset}, data=piece)
            if r.status_code == 409 and (theirs := _their_offset(r)) is not None:
                offset = theirs  # a piece lost or sent twice: go on from what they hold
                continue
            offset = int(self._ok(r, lease).json()["offset"])

    def upload(self, lease: Lease, folder: Path) -> None:
        """The finished build folder, as a tar in pieces, then landed (checked and published
        by the central server, which finishes the job under `lease`). When the central server
        holds less than the whole tar at the landing (it lost the pieces: a failure while it
        landed discards them), the rest is sent again, a few times at most."""
        k = lease.key
        with tempfile.TemporaryFile(dir=folder.parent) as tar:
            with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as archive:
                for entry in sorted(os.listdir(folder)):
                    archive.add(folder / entry, arcname=entry, recursive=True)
            size = tar.tell()
            tar.seek(0)
            digest = hashlib.file_digest(tar, "sha256").hexdigest()
            offset = 0
            for _ in range(UPLOAD_ATTEMPTS):
                sent = self.send(lease, "result", tar, offset)
                if sent != size:
                    raise CentralRefused(f"the central server holds {sent} bytes of {size}")
                r = self._call("POST", f"/api/builder/result/{k.project}/{k.id}/land", lease,
                               params={"size": size, "sha256": digest},
                               timeout=(CONNECT_TIMEOUT, LAND_TIMEOUT))
                if r.status_code != 409 or (theirs := _their_offset(r)) is None:
                    self._ok(r, lease)
                    return
                offset = theirs
        raise CentralRefused(f"the central server did not land build {k} after "
                             f"{UPLOAD_ATTEMPTS} uploads")


def _their_offset(r: requests.Response) -> int | None:
    """The size the central server holds, from its 409 to a piece at the wrong offset; None
    for any other answer."""
    try:
        body = r.json()
    except ValueError:
        return None
    offset = body.get("offset") if isinstance(body, dict) else None
    return offset if isinstance(offset, int) and offset >= 0 else None


class LogShipper(threading.Thread):
    """Follows a build's log file as it grows and sends each new piece to the central server;
    `close()` sends the rest and stops."""

    def __init__(self, central: Central, lease: Lease, path: Path):
        super().__init__(name=f"mistryd-log-{lease.key.id[:12]}", daemon=True)
        self.central, self.lease, self.path = central, lease, path
        self._closing = threading.Event()
        self.offset = 0

    def run(self) -> None:
        while not self._closing.wait(LOG_EVERY):
            self._ship()

    def _ship(self) -> None:
        try:
            with open(self.path, "rb") as f:
                self.offset = self.central.send(self.lease, "log", f, self.offset)
        except FileNotFoundError:
            pass
        except LeaseLost:
            self._closing.set()
        except Exception:  # noqa: BLE001 - the next look sends it
            log.exception("mistryd worker: the log of %s was not sent", self.lease.key)

    def close(self) -> None:
        self._closing.set()
        if self.is_alive():
            self.join(30)
        self._ship()
