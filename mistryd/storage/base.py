"""The storage interface every adapter implements; one contract test runs against each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    name: str

    def create(self, path: Path) -> None:
        """Make a new, empty build folder at `path` (its parent exists)."""

    def clone(self, source: Path, path: Path) -> None:
        """Make `path` a copy of the build folder `source` (copy-on-write where the disk can)."""

    def remove(self, path: Path) -> None:
        """Remove a build folder made by create or clone, whatever it holds."""


def disk_usage(path: Path) -> int:
    """Bytes used by the files below `path` (apparent sizes; shared extents counted each time)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total
