"""What a build leaves behind is hostile input: it is checked and defused before anything keeps,
serves or carries it into the next build.

The container ran arbitrary code as the build uid with `/data` writable. Once it has exited
(nothing in it can race us any more), `sanitize` makes sure that:
- `data/params`, `data/artifacts` and `data/cache` are real directories, not symlinks to `/etc`
  or files: otherwise the build is refused (it fails) and the offending entry is removed;
- no file keeps a setuid or setgid bit (a setuid-root copy of a shell in the artifacts would give
  any local user root, and the client used to restore the bit);
- no device node, FIFO or socket is kept (reading one can block for ever or reach the host's
  hardware); symlinks stay links, never followed.
The walk is descriptor-based (`os.fwalk`, no symlink following), so a link can never lead it out
of the build folder.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIRS = ("params", "artifacts", "cache")
_DROP_BITS = stat.S_ISUID | stat.S_ISGID


@dataclass
class Findings:
    """What `sanitize` found and did."""

    refused: list[str] = field(default_factory=list)  # why the build cannot be kept as a success
    stripped: int = 0  # files and folders that lost a setuid/setgid bit
    removed: int = 0  # special files removed

    def summary(self) -> str:
        parts = []
        if self.stripped:
            parts.append(f"removed setuid/setgid bits from {self.stripped} file(s)")
        if self.removed:
            parts.append(f"removed {self.removed} device/FIFO/socket file(s)")
        return "; ".join(parts)


def check_data_dirs(data_dir: Path) -> list[str]:
    """Which of data/ and its three folders are not real directories (described for a log)."""
    problems = []
    try:
        if not stat.S_ISDIR(os.lstat(data_dir).st_mode):
            return ["/data is not a directory"]
    except FileNotFoundError:
        return ["/data is missing"]
    for name in DATA_DIRS:
        try:
            st = os.lstat(data_dir / name)
        except FileNotFoundError:
            problems.append(f"/data/{name} was removed")
            continue
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"/data/{name} is a symlink (to {os.readlink(data_dir / name)!r}), "
                            "not a directory")
        elif not stat.S_ISDIR(st.st_mode):
            problems.append(f"/data/{name} is not a directory")
    return problems


def replace_bad_data_dirs(data_dir: Path, owner: int | None = None) -> None:
    """Put an empty real directory where data/<name> is anything else."""
    for name in DATA_DIRS:
        path = data_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            continue
        if st is not None:
            os.unlink(path)
        path.mkdir()
        if owner is not None:
            os.chown(path, owner, owner)


def sanitize(data_dir: Path) -> Findings:
    """Defuse what a finished build left in `data_dir` (see the module doc)."""
    findings = Findings()
    findings.refused = check_data_dirs(data_dir)
    if "/data is not a directory" in findings.refused or "/data is missing" in findings.refused:
        return findings
    replace_bad_data_dirs(data_dir)
    for name in DATA_DIRS:
        _defuse_tree(data_dir / name, findings)
    return findings


def _defuse_tree(root: Path, findings: Findings) -> None:
    _strip_bits(os.lstat(root).st_mode, root, None, findings)
    for _, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in dirnames + filenames:
            _defuse_entry(dir_fd, name, findings)


def _defuse_entry(dir_fd: int, name: str, findings: Findings) -> None:
    """Remove `name` (in the folder `dir_fd`) when it is a special file, else strip its
    setuid/setgid bits; a symlink is left as it is (never followed)."""
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        os.unlink(name, dir_fd=dir_fd)
        findings.removed += 1
        return
    _strip_bits(mode, name, dir_fd, findings)


def _strip_bits(mode: int, path: str | Path, dir_fd: int | None, findings: Findings) -> None:
    if not mode & _DROP_BITS:
        return
    # through a descriptor opened without following links (Linux has no lchmod)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & ~_DROP_BITS)
    finally:
        os.close(fd)
    findings.stripped += 1


def hand_over(data_dir: Path, uid: int, gid: int) -> None:
    """Give the build uid the folders it writes (`data`, `artifacts`, `cache`); `params` stays
    the server's. A cache written by another uid (the config changed) is handed over whole."""
    if uid < 0 or os.geteuid() != 0:
        return  # not root: builds run as the server's own uid (or as configured)
    for name in ("", "artifacts", "cache"):
        path = data_dir / name if name else data_dir
        st = os.lstat(path)
        if st.st_uid == uid and st.st_gid == gid:
            continue
        os.chown(path, uid, gid, follow_symlinks=False)
        if name == "cache":
            for dirpath, dirnames, filenames in os.walk(path):
                for entry in dirnames + filenames:
                    os.chown(os.path.join(dirpath, entry), uid, gid, follow_symlinks=False)
