"""What a target already holds of a manifest, so that a re-fetch moves only what changed.

A file in the target is taken as equal to the manifest's when it is a regular file (reached through
real directories only) with the manifest's size and mode and the manifest's sha256. Reading every
file to hash it would cost as much as a large part of the download, so after each fetch the client
records, per file it placed, the sha256 together with the file's inode, size, mtime and ctime
(nanoseconds) in a small state file under ~/.cache/mistry (XDG_CACHE_HOME), keyed by the target's
real path. A file whose inode, size, mtime and ctime are all still as recorded has not been written
to, renamed over or chmod-ed since (ctime cannot be set back from user space), so its recorded
sha256 stands. Any other file of the right size is hashed. The state file is a cache: when it is
missing, unreadable or stale, files are hashed, never trusted.

The state also keeps the manifest's ETag and every link's signature and directory's mode. When
the server says the manifest is still that one (a 304 to If-None-Match) and every entry is as
recorded (State.unchanged: one lstat each), the target already holds the build: neither the
manifest nor any file is fetched. The file's first line (version, target, ETag, mode mask) is
all that pruning reads.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .manifest import Manifest

STATE_VERSION = 2
HASH_CHUNK = 1 << 20
PRUNE_EVERY = 24 * 3600  # seconds: how often the state folder is looked through
KEEP_FOR = 30 * 24 * 3600  # seconds: a state not written for this long goes (and any whose
# target is gone)


def state_folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mistry" / "targets"


def state_file(target: Path) -> Path:
    # BLAKE3, which verifies the download anyway: hashlib (OpenSSL) costs ms of every start
    from blake3 import blake3

    key = blake3(os.fsencode(os.path.realpath(target))).hexdigest()[:32]
    return state_folder() / f"{key}.state"


SIGNATURE = 5  # ints in a signature (see signature())


class State:
    """What the last fetch into a target left there: the manifest's ETag (None: not every entry
    could be recorded), the mode mask it was fetched with, and per entry what it should find:
    files with their sha256 and signature, links with their signature, directories with their
    permission bits. Kept in columns (paths, and the numbers in one array), which load in a few
    milliseconds where 30,000 JSON records took 40."""

    __slots__ = ("manifest", "mode_mask", "files", "file_sigs", "file_sha256", "dirs",
                 "dir_modes", "links", "link_sigs")

    def __init__(self, manifest: str | None, mode_mask: int, files: list[str],
                 file_sigs: array.array, file_sha256: list[str], dirs: list[str],
                 dir_modes: array.array, links: list[str], link_sigs: array.array):
        self.manifest, self.mode_mask = manifest, mode_mask
        self.files, self.file_sigs, self.file_sha256 = files, file_sigs, file_sha256  # SIGNATURE
        self.dirs, self.dir_modes = dirs, dir_modes  # ints per file, and per link
        self.links, self.link_sigs = links, link_sigs

    def unchanged(self, target: Path) -> bool:
        """Every entry still as the last fetch left it: the same file (signature), link
        (signature) and directory (a directory with these permission bits)."""
        root = os.fspath(target)
        lstat = os.lstat
        try:
            for paths, sigs in ((self.files, self.file_sigs), (self.links, self.link_sigs)):
                for i, path in enumerate(paths):
                    st = lstat(f"{root}/{path}")
                    j = i * SIGNATURE
                    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) \
                            != (sigs[j], sigs[j + 1], sigs[j + 2], sigs[j + 3], sigs[j + 4]):
                        return False
            for path, mode in zip(self.dirs, self.dir_modes, strict=True):
                st = lstat(f"{root}/{path}")
                if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
                    return False
        except OSError:
            return False
        return True

    @classmethod
    def empty(cls, mode_mask: int) -> State:
        return cls(None, mode_mask, [], array.array("q"), [], [], array.array("q"), [],
                   array.array("q"))

    def recorded_files(self) -> dict[str, list]:
        """path -> [sha256, *signature] of every file."""
        sigs = self.file_sigs.tolist()
        return {path: [sha, *sigs[i * SIGNATURE:(i + 1) * SIGNATURE]]
                for i, (path, sha) in enumerate(zip(self.files, self.file_sha256, strict=True))}

    def sections(self) -> list[bytes]:
        return [_joined(self.files), self.file_sigs.tobytes(), _joined(self.file_sha256),
                _joined(self.dirs), self.dir_modes.tobytes(), _joined(self.links),
                self.link_sigs.tobytes()]

    @classmethod
    def of_sections(cls, manifest: str | None, mode_mask: int, sections: list[bytes]) -> State:
        files, file_sigs, sha256, dirs, dir_modes, links, link_sigs = sections
        state = cls(manifest, mode_mask, _split(files), _ints(file_sigs), _split(sha256),
                    _split(dirs), _ints(dir_modes), _split(links), _ints(link_sigs))
        if len(state.file_sigs) != SIGNATURE * len(state.files) \
                or len(state.file_sha256) != len(state.files) \
                or len(state.dir_modes) != len(state.dirs) \
                or len(state.link_sigs) != SIGNATURE * len(state.links):
            raise ValueError("the columns of the state do not match")
        return state


def _joined(texts: list[str]) -> bytes:
    return "\0".join(texts).encode("utf-8", "surrogatepass")  # (paths never hold a NUL)


def _split(blob: bytes) -> list[str]:
    return blob.decode("utf-8", "surrogatepass").split("\0") if blob else []


def _ints(blob: bytes) -> array.array:
    numbers = array.array("q")
    numbers.frombytes(blob)
    return numbers


def load(target: Path) -> State | None:
    """The state of the last fetch into `target`; None when there is none (or it is unreadable,
    of another version, or of another folder). The file: a JSON line (version, target, ETag,
    mode mask, the sizes of the sections), then the sections (State.sections)."""
    try:
        with open(state_file(target), "rb") as f:
            head = json.loads(f.readline())
            if head["v"] != STATE_VERSION or head["target"] != os.path.realpath(target):
                return None
            body = f.read()
        sections, at = [], 0
        for size in head["sections"]:
            sections.append(body[at:at + size])
            at += size
        if at != len(body):
            return None
        return State.of_sections(head["manifest"], head["mask"], sections)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def used(target: Path) -> None:
    """The state served a fetch without being written again: it is not stale (see prune)."""
    with contextlib.suppress(OSError):
        os.utime(state_file(target))


def signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def already_there(target: Path, manifest: Manifest, mode_mask: int,
                  state: State | None) -> tuple[set[int], bool]:
    """Indexes of the manifest entries the target holds as they are: files (see above), symlinks
    with the same target, real directories with the same mode; and whether the state file already
    vouched for every file found (else it is worth writing again)."""
    if empty(target):
        return set(), False  # nothing there (the usual first fetch)
    checks = _Checks(state.recorded_files() if state is not None else {})
    root = os.fspath(target)
    not_real_dirs: set[str] = set()  # dirs the target lacks: nothing beneath them counts
    there: set[int] = set()
    for i, (path, kind) in enumerate(zip(manifest.paths, manifest.kinds, strict=True)):
        parent = path.rpartition("/")[0]
        if parent and _beneath(parent, not_real_dirs):
            if kind == "dir":
                not_real_dirs.add(path)
            continue
        try:
            st = os.lstat(f"{root}/{path}")
        except OSError:
            st = None
        if kind == "dir":
            if st is None or not stat.S_ISDIR(st.st_mode):
                not_real_dirs.add(path)
            elif stat.S_IMODE(st.st_mode) == manifest.modes[i] & mode_mask:
                there.add(i)
        elif st is None:
            continue
        elif kind == "symlink":
            if stat.S_ISLNK(st.st_mode) and os.readlink(f"{root}/{path}") == manifest.targets[i]:
                there.add(i)
        elif checks.same_file(f"{root}/{path}", st, manifest, i, mode_mask):
            there.add(i)
    return there, not checks.hashed


def empty(target: Path) -> bool:
    """Nothing there to compare: the target is missing, not a folder, or an empty folder."""
    try:
        with os.scandir(target) as entries:
            return next(entries, None) is None
    except (FileNotFoundError, NotADirectoryError):
        return True


def _beneath(parent: str, dirs: set[str]) -> bool:
    while parent:
        if parent in dirs:
            return True
        parent = parent.rpartition("/")[0]
    return False


class _Checks:
    def __init__(self, recorded: dict[str, list]):
        self.recorded = recorded
        self.hashed = False  # some file had to be read

    def same_file(self, path: str, st: os.stat_result, manifest: Manifest, i: int,
                  mode_mask: int) -> bool:
        if not stat.S_ISREG(st.st_mode) or st.st_size != manifest.sizes[i] \
                or stat.S_IMODE(st.st_mode) != manifest.modes[i] & mode_mask:
            return False
        if self.recorded.get(manifest.paths[i]) == [manifest.sha256[i], *signature(st)]:
            return True
        self.hashed = True
        return _sha256_of(path) == manifest.sha256[i]


def _signature_of(path: str, kind: Callable[[int], bool]) -> list[int] | None:
    """The signature of what `path` is, when it is of that kind (stat.S_ISREG, S_ISLNK)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return signature(st) if kind(st.st_mode) else None


def _sha256_of(path: str) -> str | None:
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def record(target: Path, manifest: Manifest, written: Mapping[int, Sequence[int]], moved: set[str],
           tag: str | None, mode_mask: int) -> None:
    """Remember the manifest's entries as they now are in the target: files with their sha256 and
    signature, links with their signature, directories with the manifest's permission bits (as
    the fetch made them); and the manifest's ETag (`tag`), when every entry was found, so that
    the next fetch of the same manifest only looks (State.unchanged). `written`: the signatures
    of the files just placed (by manifest index), taken in the staging folder; `moved`: the paths
    renamed into the target (a rename changes the ctime of what it moves, not of what lies
    beneath it), which are looked at again. Best effort: a cache that cannot be written only
    makes the next re-fetch hash."""
    root = os.fspath(target)
    paths, kinds = manifest.paths, manifest.kinds
    state = State.empty(mode_mask)
    dirs = [i for i, kind in enumerate(kinds) if kind == "dir"]
    state.dirs = [paths[i] for i in dirs]
    state.dir_modes = array.array("q", [manifest.modes[i] & mode_mask for i in dirs])
    whole = True
    files = [i for i, kind in enumerate(kinds) if kind == "file"]
    sigs = [None if paths[i] in moved else written.get(i) for i in files]
    if None in sigs:  # not written by this fetch (or renamed into place): as it is now
        for j, i in enumerate(files):
            if sigs[j] is None:
                sigs[j] = _signature_of(f"{root}/{paths[i]}", stat.S_ISREG)
        whole = None not in sigs
        files = [i for i, sig in zip(files, sigs, strict=True) if sig is not None]
        sigs = [sig for sig in sigs if sig is not None]
    state.files = [paths[i] for i in files]
    state.file_sigs = array.array("q", itertools.chain.from_iterable(sigs))  # type: ignore[arg-type]
    state.file_sha256 = [manifest.sha256[i] for i in files]
    for i in manifest.links():
        sig = _signature_of(f"{root}/{paths[i]}", stat.S_ISLNK)
        if sig is None:
            whole = False
            continue
        state.links.append(paths[i])
        state.link_sigs.extend(sig)
    state.manifest = tag if whole else None
    folder = state_folder()
    with contextlib.suppress(OSError, UnicodeError):
        sections = state.sections()
        head = {"v": STATE_VERSION, "target": os.path.realpath(target), "manifest": state.manifest,
                "mask": mode_mask, "sections": [len(section) for section in sections]}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = str(folder / f".state-{os.getpid()}-{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(head).encode() + b"\n")
                f.writelines(sections)
            os.replace(tmp, state_file(target))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        prune(folder)


def prune(folder: Path, now: float | None = None) -> None:
    """At most once a day: remove the states of targets that are gone, and those not written for
    KEEP_FOR (a CI job fetching into a new folder each time would otherwise leave one behind for
    every fetch). Reads only each state's first line."""
    now = time.time() if now is None else now
    marker = folder / ".pruned"
    with contextlib.suppress(OSError):
        if now - marker.stat().st_mtime < PRUNE_EVERY:
            return
    marker.touch()
    for old in folder.glob("*.json"):  # the first version's states (one JSON document)
        with contextlib.suppress(OSError):
            old.unlink()
    for state in folder.glob("*.state"):
        with contextlib.suppress(OSError):
            if now - state.stat().st_mtime > KEEP_FOR or not _target_exists(state):
                state.unlink()


def _target_exists(state: Path) -> bool:
    with open(state, "rb") as f:
        line = f.readline(1 << 16)
    try:
        target = json.loads(line)["target"]
    except (ValueError, KeyError, TypeError):
        return False  # another version's, or broken: of no use
    return isinstance(target, str) and os.path.isdir(target)
