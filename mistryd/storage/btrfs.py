"""Build folders as Btrfs subvolumes; a clone is a snapshot: constant time whatever the cache holds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .plain import copy_tree

try:  # the C bindings; the `btrfs` command is the fallback
    import btrfsutil
except ImportError:  # pragma: no cover - exercised only where the bindings are missing
    btrfsutil = None


class BtrfsStorage:
    name = "btrfs"

    def create(self, path: Path) -> None:
        if btrfsutil:
            btrfsutil.create_subvolume(str(path))
        else:
            _btrfs("subvolume", "create", str(path))

    def clone(self, source: Path, path: Path) -> None:
        if not self._is_subvolume(source):  # e.g. made by the plain adapter before a switch
            copy_tree(source, path)
            return
        if btrfsutil:
            btrfsutil.create_snapshot(str(source), str(path))
        else:
            _btrfs("subvolume", "snapshot", str(source), str(path))

    def remove(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            return
        if not self._is_subvolume(path):
            shutil.rmtree(path)
        elif btrfsutil:
            btrfsutil.delete_subvolume(str(path), recursive=True)
        else:
            _btrfs("subvolume", "delete", str(path))

    @staticmethod
    def _is_subvolume(path: Path) -> bool:
        if btrfsutil:
            try:
                return btrfsutil.is_subvolume(str(path))
            except btrfsutil.BtrfsUtilError:
                return False
        return Path(path).stat().st_ino == 256


def _btrfs(*args: str) -> None:
    subprocess.run(["btrfs", *args], check=True, capture_output=True)
