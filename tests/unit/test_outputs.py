"""What a build leaves is defused on real files: links kept as links, setuid bits stripped,
special files removed, swapped folders refused."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from mistryd.outputs import check_data_dirs, hand_over, sanitize


def make_data(root: Path) -> Path:
    data = root / "data"
    for name in ("params", "artifacts", "cache"):
        (data / name).mkdir(parents=True)
    return data


def test_a_clean_build_is_left_as_it_is(tmp_path):
    data = make_data(tmp_path)
    (data / "artifacts" / "a.txt").write_text("hi")
    (data / "artifacts" / "link").symlink_to("/etc/shadow")
    findings = sanitize(data)
    assert findings.refused == [] and findings.stripped == 0 and findings.removed == 0
    assert os.readlink(data / "artifacts" / "link") == "/etc/shadow"


def test_setuid_and_setgid_bits_are_stripped_everywhere(tmp_path):
    data = make_data(tmp_path)
    shell = data / "artifacts" / "deep" / "bash"
    shell.parent.mkdir()
    shell.write_bytes(b"\x7fELF")
    os.chmod(shell, 0o4755)
    os.chmod(shell.parent, 0o2775)
    (data / "cache" / "sgid").write_text("x")
    os.chmod(data / "cache" / "sgid", 0o2755)
    findings = sanitize(data)
    assert findings.stripped == 3
    assert stat.S_IMODE(shell.stat().st_mode) == 0o755
    assert stat.S_IMODE(shell.parent.stat().st_mode) == 0o775
    assert stat.S_IMODE((data / "cache" / "sgid").stat().st_mode) == 0o755


def test_special_files_are_removed(tmp_path):
    data = make_data(tmp_path)
    os.mkfifo(data / "artifacts" / "fifo")
    os.mknod(data / "cache" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(data / "artifacts" / "sock"))
    findings = sanitize(data)
    assert findings.removed == 3
    assert sorted(os.listdir(data / "artifacts")) == [] and os.listdir(data / "cache") == []


def test_a_folder_swapped_for_a_link_is_refused_and_replaced(tmp_path):
    data = make_data(tmp_path)
    (data / "artifacts").rmdir()
    (data / "artifacts").symlink_to("/etc")
    (data / "cache").rmdir()
    (data / "cache").write_text("not a folder")
    findings = sanitize(data)
    assert len(findings.refused) == 2
    assert "symlink" in findings.refused[0] and "/etc" in findings.refused[0]
    assert (data / "artifacts").is_dir() and not (data / "artifacts").is_symlink()
    assert check_data_dirs(data) == []
    assert os.path.exists("/etc/passwd")  # the link target was never touched


def test_hand_over_gives_the_build_uid_its_folders_only(tmp_path):
    data = make_data(tmp_path)
    (data / "cache" / "old").write_text("x")
    hand_over(data, 65532, 65532)
    for name in ("", "artifacts", "cache", "cache/old"):
        assert (data / name).stat().st_uid == 65532
    assert (data / "params").stat().st_uid == os.getuid()
