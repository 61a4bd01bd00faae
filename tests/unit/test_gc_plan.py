"""GC planning over plain values: no disk, no clock."""

import re

import pytest

from mistryd.errors import InsufficientStorage
from mistryd.gc import BuildUsage, check_free_space, human, newest_successful, plan_evictions

MB = 1 << 20


def b(build_id: str, last_used: float, size: int = MB, status: str = "succeeded", group: str = "",
      project: str = "p", finished_at: float | None = None) -> BuildUsage:
    return BuildUsage(project, build_id, group, status, last_used,
                      last_used if finished_at is None else finished_at, size)


def ids(plan) -> list[str]:
    return [e.build.id for e in plan]


def test_no_limits_evict_nothing():
    builds = [b("a", 1), b("b", 2), b("c", 3)]
    assert plan_evictions(builds, None, None, now=1e9) == []


def test_budget_evicts_least_recently_used_until_it_fits():
    builds = [b("old", 10), b("used", 5, finished_at=1), b("mid", 20), b("new", 30)]
    plan = plan_evictions(builds, 2 * MB, None, now=100)
    assert ids(plan) == ["used", "old"]  # by last use, whatever the finish time
    assert {e.reason for e in plan} == {"budget"}


def test_a_cache_hit_moves_a_build_to_the_back_of_the_line():
    before = [b("x1", 1), b("x2", 2), b("x3", 3)]
    assert ids(plan_evictions(before, 2 * MB, None, now=10)) == ["x1"]
    after_hit = [b("x1", 9, finished_at=1), b("x2", 2), b("x3", 3)]
    assert ids(plan_evictions(after_hit, 2 * MB, None, now=10)) == ["x2"]


def test_the_newest_successful_build_of_each_group_is_never_evicted():
    builds = [b("a1", 1, group="a"), b("a2", 2, group="a"), b("b1", 3, group="b"),
              b("n1", 4), b("other", 5, project="q")]
    plan = plan_evictions(builds, 0, 0, now=1000)
    assert ids(plan) == ["a1"]
    assert newest_successful(builds) == {("p", "a2"), ("p", "b1"), ("p", "n1"), ("q", "other")}


def test_newest_is_by_finish_time_and_only_among_successes():
    builds = [b("ok", 50, group="g", finished_at=1), b("newer-ok", 2, group="g", finished_at=2),
              b("failed", 3, group="g", status="failed", finished_at=3)]
    assert newest_successful(builds) == {("p", "newer-ok")}
    assert ids(plan_evictions(builds, 0, None, now=100)) == ["failed", "ok"]


def test_failed_builds_count_and_go_first_when_least_recently_used():
    builds = [b("f", 1, status="failed"), b("t", 2, status="timed-out"), b("s1", 3), b("s2", 4)]
    assert ids(plan_evictions(builds, 2 * MB, None, now=10)) == ["f", "t"]


def test_queued_and_running_builds_are_never_evicted_but_count():
    builds = [b("q", 1, status="queued", size=0), b("r", 2, status="running", size=3 * MB),
              b("s1", 3), b("s2", 4)]
    plan = plan_evictions(builds, MB, 0, now=100)
    assert ids(plan) == ["s1"]  # still over budget: the rest is protected


def test_pointers_on_disk_are_kept_too():
    builds = [b("a", 1), b("b", 2), b("c", 3)]
    assert ids(plan_evictions(builds, 0, None, now=10, keep={("p", "a")})) == ["b"]


def test_age_limit_uses_last_use_and_is_strictly_older():
    builds = [b("stale", 100), b("edge", 400), b("fresh", 900), b("newest", 950)]
    plan = plan_evictions(builds, None, 600, now=1000)
    assert ids(plan) == ["stale"]
    assert [e.reason for e in plan] == ["age"]


def test_age_and_budget_together_in_one_lru_pass():
    builds = [b("stale", 100), b("s2", 500), b("s3", 600), b("s4", 700)]
    plan = plan_evictions(builds, 2 * MB, 600, now=1000)
    assert [(e.build.id, e.reason) for e in plan] == [("stale", "age"), ("s2", "budget")]


def test_budget_pass_skips_builds_without_a_folder():
    builds = [b("abandoned", 1, status="abandoned", size=0), b("s1", 2), b("s2", 3)]
    assert ids(plan_evictions(builds, MB, None, now=10)) == ["s1"]
    assert ids(plan_evictions(builds, None, 5, now=10)) == ["abandoned", "s1"]


def test_exact_fit_is_within_budget():
    builds = [b("a", 1), b("b", 2)]
    assert plan_evictions(builds, 2 * MB, None, now=10) == []


def test_free_space_check_names_path_numbers_and_fix(tmp_path):
    check_free_space(tmp_path, 0)  # off
    check_free_space(tmp_path, 1)
    with pytest.raises(InsufficientStorage) as e:
        check_free_space(tmp_path, 1 << 62)
    assert e.value.status == 507
    msg = e.value.message
    assert f"build_path={tmp_path}" in msg and f"min_free_bytes={1 << 62}" in msg
    assert re.search(r" free \(\d+ bytes\)", msg) and "`mistryd gc`" in msg


def test_human_sizes():
    assert human(0) == "0 B" and human(1023) == "1023 B"
    assert human(1536) == "1.5 KiB" and human(3 * MB) == "3.0 MiB"
