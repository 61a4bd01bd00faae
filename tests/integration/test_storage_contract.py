"""One contract, run against every storage adapter on its real file system."""

import os

import pytest

from mistryd.storage import is_btrfs, make_storage


@pytest.fixture
def storage(fs_kind, build_root):
    s = make_storage("auto", build_root)
    assert s.name == fs_kind  # auto-detection picks the adapter for the file system
    return s


def test_create_clone_remove(storage, build_root):
    a, b = build_root / "a", build_root / "b"
    storage.create(a)
    (a / "data" / "cache").mkdir(parents=True)
    (a / "data" / "cache" / "big").write_bytes(os.urandom(1 << 16))
    os.symlink("big", a / "data" / "cache" / "link")
    storage.clone(a, b)
    assert (b / "data" / "cache" / "big").read_bytes() == (a / "data" / "cache" / "big").read_bytes()
    assert os.readlink(b / "data" / "cache" / "link") == "big"
    (b / "data" / "cache" / "big").write_bytes(b"changed")
    assert (a / "data" / "cache" / "big").read_bytes() != b"changed"  # clones are independent
    storage.remove(a)
    storage.remove(b)
    assert not a.exists() and not b.exists()
    storage.remove(a)  # removing what is gone is no error


def test_btrfs_clone_is_a_snapshot(btrfs_root):
    import btrfsutil

    s = make_storage("btrfs", btrfs_root)
    src, dst = btrfs_root / "snap-src", btrfs_root / "snap-dst"
    s.create(src)
    s.clone(src, dst)
    assert btrfsutil.is_subvolume(str(dst))
    assert is_btrfs(btrfs_root)
    s.remove(src)
    s.remove(dst)


def test_plain_detected_on_ordinary_disk(tmp_path):
    assert not is_btrfs(tmp_path)
    assert make_storage("auto", tmp_path).name == "plain"
