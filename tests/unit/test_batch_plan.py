"""Batches' pure parts: the request's validation (duplicates, unknown needs, cycles named), the
plan (what may be submitted, what is skipped and why), a submitted job's state as the index shows
it, and the batch records in a real index."""

from __future__ import annotations

import itertools

import pytest

from mistryd.batches import (
    MAX_JOBS,
    SUBMIT_GRACE,
    observed_state,
    order,
    parse_batch,
    plan,
)
from mistryd.errors import BadRequest, Unprocessable
from mistryd.layout import Layout
from mistryd.store import BatchJobRow, Status, Store


def job(name: str, needs=(), **fields) -> dict:
    return {"name": name, "project": "hello", "needs": list(needs), **fields}


def test_a_valid_batch_keeps_its_order_needs_and_requests():
    jobs = parse_batch({"jobs": [job("a", params={"k": "v", "_secret": "s"}, group="g"),
                                 job("b", needs=["a"]), {"Name": "c", "PROJECT": "hello"}]})
    assert [j.name for j in jobs] == ["a", "b", "c"]
    assert jobs[0].request.params == {"k": "v", "_secret": "s"} and jobs[0].request.group == "g"
    assert jobs[1].needs == ("a",) and jobs[2].needs == ()


@pytest.mark.parametrize("body, error, words", [
    ({"jobs": [job("a"), job("a")]}, Unprocessable, "'a' is given twice"),
    ({"jobs": [job("a", needs=["x"])]}, Unprocessable, "job 'a' needs 'x', which is not a job"),
    ({"jobs": [job("a", needs=["a"])]}, Unprocessable, "jobs a -> a form a cycle"),
    ({"jobs": [job("a", needs=["b"]), job("b", needs=["a"])]}, Unprocessable, "form a cycle"),
    ({"jobs": []}, BadRequest, "non-empty list"),
    ({"jobs": [job(str(i)) for i in range(MAX_JOBS + 1)]}, BadRequest, f"at most {MAX_JOBS}"),
    ({"jobs": [job("a")], "extra": 1}, BadRequest, '{"jobs": [...]}'),
    ([job("a")], BadRequest, '{"jobs": [...]}'),
    ({"jobs": ["a"]}, BadRequest, "jobs[0] must be an object"),
    ({"jobs": [{"project": "hello"}]}, BadRequest, "'name' is required"),
    ({"jobs": [job("../x")]}, BadRequest, "must not contain"),
    ({"jobs": [{**job("a"), "needs": "b"}]}, BadRequest, "'needs' must be a list"),
    ({"jobs": [job("a", needs=["b", "b"]), job("b")]}, BadRequest, "names a job twice"),
    # each job's own fields as POST /jobs checks them, with the job's name in front
    ({"jobs": [job("a", params={"k": 1})]}, BadRequest, "job 'a': param 'k' must be a string"),
    ({"jobs": [job("a", colour="red")]}, BadRequest, "job 'a': unknown field(s) colour"),
    ({"jobs": [{"name": "a"}]}, BadRequest, "job 'a': 'project' is required"),
])
def test_bad_batches_are_refused_with_a_message_naming_the_problem(body, error, words):
    with pytest.raises(error) as caught:
        parse_batch(body)
    assert words in caught.value.message
    assert type(caught.value) is error  # 400 or 422, not a subclass with another status


def test_a_cycle_is_named_in_the_direction_of_its_needs():
    with pytest.raises(Unprocessable) as caught:
        order({"a": ("b",), "b": ("c",), "c": ("a",), "d": ()})
    message = caught.value.message
    cycle = message.removeprefix("jobs ").split(" form")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    needs = {"a": "b", "b": "c", "c": "a"}
    assert all(needs[x] == y for x, y in itertools.pairwise(cycle))  # x needs y


def test_order_puts_every_job_after_its_needs():
    needs = {"app": ("lib", "tools"), "lib": ("base",), "tools": ("base",), "base": ()}
    ordered = order(needs)
    assert all(ordered.index(n) < ordered.index(j) for j, ns in needs.items() for n in ns)


def chain_states(**states: str) -> list[tuple[str, tuple[str, ...], str]]:
    """a <- b <- c, with d independent."""
    needs = {"a": (), "b": ("a",), "c": ("b",), "d": ()}
    return [(name, needs[name], states.get(name, "waiting")) for name in needs]


def test_plan_submits_the_jobs_whose_needs_succeeded_and_independent_branches_at_once():
    first = plan(chain_states())
    assert first.submit == ["a", "d"] and first.skip == {} and not first.done
    assert plan(chain_states(a="running", d="queued")).submit == []
    assert plan(chain_states(a="succeeded", d="running")).submit == ["b"]
    assert plan(chain_states(a="succeeded", b="succeeded", d="succeeded")).submit == ["c"]
    assert plan(chain_states(a="succeeded", b="succeeded", c="succeeded", d="failed")).done


def test_a_failure_skips_its_dependents_transitively_naming_the_failed_build():
    steps = plan(chain_states(a="failed", d="running"))
    assert steps.submit == [] and not steps.done  # d still runs
    assert steps.skip == {"b": "needs 'a', which failed",
                          "c": "needs 'b', which was skipped because 'a' failed"}
    assert plan(chain_states(a="failed", d="succeeded")).done
    later = plan(chain_states(a="succeeded", b="timed-out", d="succeeded"))
    assert later.skip == {"c": "needs 'b', which timed out"} and later.done


def test_a_job_is_skipped_when_any_need_fails_even_if_another_still_runs():
    jobs = [("x", (), "running"), ("y", (), "cancelled"), ("z", ("x", "y"), "waiting")]
    assert plan(jobs).skip == {"z": "needs 'y', which was cancelled"}


def row(state="submitted", submitted_at=100.0, build_status=None, build_finished_at=None):
    return BatchJobRow(batch="b", name="a", position=0, project="hello", build_id="x",
                       group="", params={}, opaque={}, rebuild=False, needs=(), state=state,
                       submitted_at=submitted_at, build_status=build_status,
                       build_finished_at=build_finished_at)


def test_a_submitted_job_takes_its_builds_state_but_not_an_earlier_builds_end():
    assert observed_state(row(state="waiting"), 0) == "waiting"
    assert observed_state(row(state="failed"), 0) == "failed"
    assert observed_state(row(build_status=Status.RUNNING), 101) == "running"
    assert observed_state(row(build_status=Status.FAILED, build_finished_at=150), 151) == "failed"
    # the key failed before: the job's own build is about to be queued
    earlier = row(build_status=Status.FAILED, build_finished_at=50)
    assert observed_state(earlier, 101) == "queued"
    assert observed_state(row(), 101) == "queued"
    # claimed but never submitted (its process died): submitted again
    assert observed_state(earlier, 100 + SUBMIT_GRACE + 1) == "lost"
    assert observed_state(row(), 100 + SUBMIT_GRACE + 1) == "lost"


def test_batch_records_in_the_index(tmp_path):
    store = Store(Layout(tmp_path))
    jobs = [BatchJobRow(batch="", name=n, position=i, project="hello", build_id=f"id{i}",
                        group="", params={"k": "v"}, opaque={"_s": "secret"}, rebuild=False,
                        needs=needs, state="waiting")
            for i, (n, needs) in enumerate([("a", ()), ("b", ("a",))])]
    store.create_batch("b1", jobs, now=10)
    assert store.open_batches() == ["b1"] and store.batch("b1").created_at == 10
    assert store.claim_batch_job("b1", "a", now=11)
    assert not store.claim_batch_job("b1", "a", now=12)  # once only
    store.batch_job_submitted("b1", "a", "id0-new", "submitted")
    store.record_queued("hello", "id0-new", "", {"k": "v"}, False, now=11.5)
    a, b = store.batch_jobs("b1")
    assert (a.build_id, a.state, a.opaque, a.build_status) == ("id0-new", "submitted", {},
                                                                Status.QUEUED)
    assert b.opaque == {"_s": "secret"} and b.needs == ("a",) and b.build_status is None
    assert store.end_batch_job("b1", "a", "failed", "exit 1", was="submitted")
    assert store.end_batch_job("b1", "b", "skipped", "needs 'a', which failed", was="waiting")
    assert store.batch_jobs("b1")[1].opaque == {}  # a secret is not kept past its use
    assert store.close_batch("b1", now=20) and not store.close_batch("b1", now=21)
    assert store.open_batches() == [] and store.batch("b1").finished_at == 20
    assert store.batch("nope") is None


def test_a_claim_given_back_only_by_its_own_claimer(tmp_path):
    store = Store(Layout(tmp_path))
    store.create_batch("b1", [BatchJobRow(batch="", name="a", position=0, project="p",
                                          build_id="x", group="", params={}, opaque={},
                                          rebuild=False, needs=(), state="waiting")])
    assert store.claim_batch_job("b1", "a", now=1)
    assert not store.unclaim_batch_job("b1", "a", submitted_at=2)  # another claim's
    assert store.unclaim_batch_job("b1", "a", submitted_at=1)
    assert store.batch_jobs("b1")[0].state == "waiting"
