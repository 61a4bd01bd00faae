"""Download-verify-move: artifacts land in a staging folder beside the target, are checked against
the manifest, and only then move into the target. A failed or interrupted download leaves the
target as it was (the staging folder is removed; after a SIGKILL it stays, named .mistry-*)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from .errors import TransferError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Self


def _private_folder(parent: Path, prefix: str) -> Path:
    """A new folder only this user can enter (as tempfile.mkdtemp, whose import costs more)."""
    for _ in range(100):
        path = parent / f"{prefix}{os.urandom(6).hex()}"
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free staging folder name in {parent}")


def safe_relpath(path: object) -> str:
    """A manifest path that stays inside the target: relative, no '.', '..' or empty parts."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise TransferError(f"the server sent an unsafe artifact path {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise TransferError(f"the server sent an unsafe artifact path {path!r}")
    return path


class Staging:
    """A temporary folder beside `target` (inside it when the parent is not writable)."""

    def __init__(self, target: Path):
        self.target = target
        parent = target.resolve().parent
        try:
            self.path = _private_folder(parent, f".mistry-{target.resolve().name}-")
        except OSError:
            target.mkdir(parents=True, exist_ok=True)
            self.path = _private_folder(target, ".mistry-partial-")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def discard(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, clear_target: bool = False,
               manifest_paths: set[str] | None = None) -> set[str]:
        """Move everything staged into the target; with `clear_target` empty it first, except for
        what `manifest_paths` names (files the target already holds as the manifest has them).
        The paths (relative to the target) that were renamed into place: what lies beneath them
        came along untouched."""
        self.target.mkdir(parents=True, exist_ok=True)
        if clear_target:
            if manifest_paths:
                prune(self.target, manifest_paths, keep=self.path)
            else:
                empty_folder(self.target, keep=self.path)
        moved: set[str] = set()
        _merge(self.path, self.target, "", moved)
        self.discard()
        return moved


def empty_folder(folder: Path, keep: Path | None = None) -> None:
    """Remove everything inside `folder` (not the folder itself: it may be the working dir)."""
    keep_real = os.path.realpath(keep) if keep is not None else None
    for entry in os.scandir(folder):
        if keep_real is not None and os.path.realpath(entry.path) == keep_real:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def prune(folder: Path, wanted: set[str], keep: Path, prefix: str = "") -> None:
    """Remove everything below `folder` whose path (relative to the top) is not in `wanted`;
    real directories that are wanted are pruned in turn (links are never followed)."""
    keep_real = os.path.realpath(keep)
    for entry in os.scandir(folder):
        rel = prefix + entry.name
        if not prefix and os.path.realpath(entry.path) == keep_real:
            continue  # a staging folder inside the target (its parent was not writable)
        is_dir = entry.is_dir(follow_symlinks=False)
        if rel in wanted:
            if is_dir:
                prune(Path(entry.path), wanted, keep, rel + "/")
        elif is_dir:
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _merge(src: Path, dest: Path, prefix: str, moved: set[str]) -> None:
    """Move src's entries into dest, replacing same-named ones (as rsync and scp do)."""
    for entry in os.scandir(src):
        target = dest / entry.name
        moved.add(prefix + entry.name)
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            existing = None
        if entry.is_dir(follow_symlinks=False):
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                moved.discard(prefix + entry.name)  # merged into, not moved
                _merge(Path(entry.path), target, f"{prefix}{entry.name}/", moved)
                os.chmod(target, stat.S_IMODE(os.lstat(entry.path).st_mode))
                continue
            if existing is not None:
                os.unlink(target)
            _move(entry.path, target)
        else:
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                shutil.rmtree(target)
            _move(entry.path, target)


def _move(src: str, dest: Path) -> None:
    """A rename; a copy when the target is on another file system than its parent folder."""
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.mistry-tmp")
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
        os.replace(tmp, dest)
