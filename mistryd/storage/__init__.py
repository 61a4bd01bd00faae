"""Build folders on disk: one interface, a Btrfs adapter and a plain one, picked by detection."""

from __future__ import annotations

from pathlib import Path

from .base import Storage
from .plain import PlainStorage

BTRFS_MAGIC = 0x9123683E


def is_btrfs(path: Path) -> bool:
    """True when `path` lives on a Btrfs file system (statfs magic, via /proc/self/mountinfo)."""
    path = Path(path).resolve()
    best, best_type = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4].replace("\\040", " ")
            fs_type = right.split()[0]
            if (str(path) == mount_point or str(path).startswith(mount_point.rstrip("/") + "/")) \
                    and len(mount_point) >= len(best):
                best, best_type = mount_point, fs_type
    return best_type == "btrfs"


def make_storage(filesystem: str, build_path: Path) -> Storage:
    """`auto` picks btrfs when build_path is on Btrfs, else plain."""
    if filesystem == "auto":
        filesystem = "btrfs" if is_btrfs(build_path) else "plain"
    if filesystem == "btrfs":
        from .btrfs import BtrfsStorage

        return BtrfsStorage()
    return PlainStorage()


__all__ = ["PlainStorage", "Storage", "is_btrfs", "make_storage"]
