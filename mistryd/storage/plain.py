"""Build folders as ordinary directories; clones are `cp -a --reflink=auto` (cheap on XFS/Btrfs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class PlainStorage:
    name = "plain"

    def create(self, path: Path) -> None:
        Path(path).mkdir()

    def clone(self, source: Path, path: Path) -> None:
        copy_tree(source, path)

    def remove(self, path: Path) -> None:
        if Path(path).exists():
            shutil.rmtree(path)


def copy_tree(source: Path, path: Path) -> None:
    subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", str(source), str(path)],
        check=True, capture_output=True,
    )
