"""Group builds start from the group's last good build: on Btrfs a snapshot, elsewhere a copy."""

from pathlib import Path


def count(info) -> str:
    return (Path(info["Path"]) / "count").read_text().strip()


def test_cache_carries_into_the_next_build_of_the_group(fs_kind, start_server):
    srv = start_server(projects=("cache",))
    first = srv.build("cache", group="g", params={"v": "1"})
    assert not first["Incremental"] and count(first) == "1"
    second = srv.build("cache", group="g", params={"v": "2"})
    assert second["Incremental"] and count(second) == "2"
    # only this build's params and artifacts: the previous ones are wiped
    assert sorted(p.name for p in Path(second["Path"]).iterdir()) == ["count", "v"]
    assert (Path(second["Path"]) / "v").read_text() == "2"
    pointer = srv.build_path / "cache" / "groups" / "g"
    assert pointer.is_symlink() and pointer.resolve().name == second["ID"]
    if fs_kind == "btrfs":
        import btrfsutil

        assert btrfsutil.is_subvolume(str(srv.build_path / "cache" / "ready" / second["ID"]))


def test_groups_are_separate_and_same_group_params_give_different_artifacts(start_server):
    srv = start_server(projects=("cache",))
    a = srv.build("cache", group="g1", params={"v": "a"})
    b = srv.build("cache", group="g2", params={"v": "a"})
    assert a["ID"] != b["ID"] and count(a) == count(b) == "1"
    c = srv.build("cache", group="g1", params={"v": "c"})
    assert (Path(c["Path"]) / "v").read_text() == "c" != (Path(a["Path"]) / "v").read_text()


def test_builds_without_group_are_never_incremental(start_server):
    srv = start_server(projects=("cache",))
    srv.build("cache", params={"v": "1"})
    second = srv.build("cache", params={"v": "2"})
    assert not second["Incremental"] and count(second) == "1"
    assert (srv.build_path / "cache" / "latest").resolve().name == second["ID"]


def test_failed_build_does_not_move_the_pointer_and_next_is_still_incremental(fs_kind,
                                                                              start_server):
    srv = start_server(projects=("cache",))
    good = srv.build("cache", group="g", params={"v": "1"})
    bad = srv.build("cache", group="g", params={"v": "2", "fail": "yes"})
    assert bad["ExitCode"] == 1 and bad["Incremental"]
    pointer = srv.build_path / "cache" / "groups" / "g"
    assert pointer.resolve().name == good["ID"]
    after = srv.build("cache", group="g", params={"v": "3"})
    assert after["Incremental"] and count(after) == "2"  # from the good build, not the failed one
