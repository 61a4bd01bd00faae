"""A build's artifact manifest as the client uses it: in columns, entry `i` being `paths[i]`,
`kinds[i]`, `modes[i]`, ... in the server's order (which the tar streams follow).

The server sends it in columns (`?form=columns`: a list per field, decoded in a fifth of the time
of one object per entry); a server from before that sends its entries, which are read into the
same columns. Either way it is checked whole before anything is written: every field of its type,
every path relative and plain, no path twice, every entry in a folder the manifest lists (so
nothing beneath a symlink). A manifest is hostile
until then: a bad one is a TransferError naming the entry, never a traceback."""

from __future__ import annotations

import array

from .errors import TransferError
from .staging import safe_relpath

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KINDS = frozenset(("dir", "file", "symlink"))
DEFAULT_MODES = {"dir": 0o755, "file": 0o644, "symlink": 0o777}  # for entries without a mode
# the columns as the server names them (`mtime` is sent too, and not used here)
COLUMNS = ("path", "type", "mode", "size", "sha256", "blake3", "target")


class Manifest:
    """The entries in columns: paths; kinds ("dir", "file" or "symlink"); modes; sizes (0 for
    directories and links); sha256 ("" for directories and links); blake3 ("" when the server
    lists none); targets (a link's target, "" for directories and files)."""

    __slots__ = ("paths", "kinds", "modes", "sizes", "sha256", "blake3", "targets")

    def __init__(self, paths: list[str], kinds: list[str], modes: list[int], sizes: list[int],
                 sha256: list[str], blake3: list[str], targets: list[str]):
        self.paths, self.kinds, self.modes, self.sizes = paths, kinds, modes, sizes
        self.sha256, self.blake3, self.targets = sha256, blake3, targets

    def __len__(self) -> int:
        return len(self.paths)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) \
            and all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    @classmethod
    def of(cls, document: object) -> Manifest:
        """The checked manifest of the server's answer, in either form."""
        if isinstance(document, dict) and "count" in document and "path" in document:
            manifest = _of_columns(document)
        elif isinstance(document, dict) and isinstance(document.get("entries"), list):
            manifest = _of_entries(document["entries"])
        else:
            raise TransferError("the server's artifact manifest has no entry list")
        manifest._check_types()
        manifest._check_paths()
        return manifest

    def entry(self, i: int) -> dict[str, Any]:
        """Entry `i` as the server's entries form has it (for messages)."""
        return {"path": self.paths[i], "type": self.kinds[i], "mode": self.modes[i],
                "size": self.sizes[i], "sha256": self.sha256[i], "blake3": self.blake3[i],
                "target": self.targets[i]}

    def verifier(self, i: int) -> tuple[Any, str, str]:
        """(hash object, expected hex digest, its name) for file `i`: BLAKE3 when the server
        lists it (about five times faster than sha256), else sha256."""
        if self.blake3[i]:
            from blake3 import blake3

            return blake3(), self.blake3[i], "BLAKE3"
        import hashlib

        return hashlib.sha256(), self.sha256[i], "sha256"

    def _check_types(self) -> None:
        """Each column of its type, checked a column at a time (a join fails on anything but
        text, an array on anything but an integer); the entry to name is looked for only when
        something is wrong."""
        try:
            for texts in (self.paths, self.kinds, self.sha256, self.blake3, self.targets):
                "".join(texts)
            numbers = array.array("q", self.modes) + array.array("q", self.sizes)
            if set(self.kinds) <= KINDS and min(numbers, default=0) >= 0 \
                    and all(self.targets[i] for i in self.links()):
                return
        except (TypeError, OverflowError):
            pass
        bad = next((i for i in range(len(self)) if not self._entry_ok(i)), None)
        what = "an entry" if bad is None else repr(self.entry(bad))
        raise TransferError(f"the server's artifact manifest has a bad entry {what}")

    def _entry_ok(self, i: int) -> bool:
        texts = (self.paths[i], self.kinds[i], self.sha256[i], self.blake3[i], self.targets[i])
        return all(type(t) is str for t in texts) and self.kinds[i] in KINDS \
            and type(self.modes[i]) is int and 0 <= self.modes[i] < 1 << 63 \
            and type(self.sizes[i]) is int and 0 <= self.sizes[i] < 1 << 63 \
            and (self.kinds[i] != "symlink" or bool(self.targets[i]))

    def links(self) -> list[int]:
        return [i for i, kind in enumerate(self.kinds) if kind == "symlink"]

    def _check_paths(self) -> None:
        """Every path plain (see safe_relpath), none twice, and every entry in a folder the
        manifest lists (so nothing lies beneath a link: it could point anywhere)."""
        paths = self.paths
        _check_plain(paths)
        if len(set(paths)) != len(paths):
            seen: set[str] = set()
            twice = next(p for p in paths if p in seen or seen.add(p))  # type: ignore[func-returns-value]
            raise TransferError(f"the server's artifact manifest lists {twice!r} twice")
        folders = {path.rpartition("/")[0] for path in paths}
        folders.discard("")
        dirs = {path for path, kind in zip(paths, self.kinds, strict=True) if kind == "dir"}
        if folders <= dirs:
            return
        links = {paths[i] for i in self.links()}
        for path in paths:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in links:
                    raise TransferError(f"the server's artifact manifest puts {path!r} "
                                        "beneath a symlink")
                parent = parent.rpartition("/")[0]
        outside = min(folders - dirs)
        raise TransferError(f"the server's artifact manifest lists entries in {outside!r} but "
                            "not that folder")


def _of_columns(document: dict) -> Manifest:
    count = document["count"]
    columns = [document.get(name) for name in COLUMNS]
    if type(count) is not int or any(not isinstance(c, list) or len(c) != count for c in columns):
        raise TransferError("the server's artifact manifest has columns of other lengths than "
                            "its count")
    return Manifest(*columns)  # type: ignore[arg-type]  # checked by Manifest.of


def _of_entries(entries: list) -> Manifest:
    manifest = Manifest([], [], [], [], [], [], [])
    for e in entries:
        kind = e.get("type") if isinstance(e, dict) else None
        if not isinstance(kind, str) or kind not in KINDS:
            raise TransferError(f"the server's artifact manifest has a bad entry {e!r}")
        manifest.paths.append(e.get("path"))
        manifest.kinds.append(kind)
        manifest.modes.append(e.get("mode", DEFAULT_MODES[kind]))
        manifest.sizes.append(e.get("size") if kind == "file" else 0)
        manifest.sha256.append(e.get("sha256") if kind == "file" else "")
        manifest.blake3.append(e.get("blake3", ""))
        manifest.targets.append(e.get("target") if kind == "symlink" else "")
    return manifest


# what a path that is not relative and plain (see safe_relpath) has, between newlines
_UNSAFE = ("\n\n", "\n/", "/\n", "//", "/./", "/.\n", "\n./", "\n.\n", "/../", "/..\n",
           "\n../", "\n..\n", "\0")


def _check_plain(paths: list[str]) -> None:
    """Every path relative and plain (see safe_relpath), checked with a few scans over all the
    paths at once; the one to name is looked for only when something is wrong."""
    joined = "\n" + "\n".join(paths) + "\n"
    if joined.count("\n") != len(paths) + 1 or any(bad in joined for bad in _UNSAFE):
        for path in paths:
            safe_relpath(path)
