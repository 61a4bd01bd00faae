"""The request threads' budget: pools of slots for long requests, a reserve for the rest."""

import pytest
from prometheus_client import generate_latest

from mistryd.errors import Unavailable
from mistryd.metrics import Metrics
from mistryd.web.capacity import Budget, Capacity


@pytest.mark.parametrize("threads", [1, 2, 4, 8, 12, 32, 128, 1000])
def test_long_requests_never_take_every_thread_when_there_are_threads_to_spare(threads):
    b = Budget.of(threads)
    assert b.waits >= 1 and b.artifacts >= 1
    assert b.waits + b.artifacts + b.reserve == threads
    if threads >= 8:
        assert b.reserve >= 4 and b.reserve >= threads // 8


def test_the_default_pool_of_128_threads():
    assert Budget.of(128) == Budget(threads=128, artifacts=16, waits=96, reserve=16)


def test_a_full_pool_refuses_with_retry_after_and_counts_it():
    metrics = Metrics()
    cap = Capacity(12, metrics)  # 3 artifacts, 5 waits, 4 reserved
    taken = [cap.waits.take() for _ in range(cap.budget.waits)]
    with pytest.raises(Unavailable) as refused:
        cap.waits.take()
    assert refused.value.status == 503 and refused.value.retry_after > 0
    assert "waiting for builds or following logs (5 at once)" in refused.value.message
    with cap.artifacts.slot():  # the other kind has its own pool
        pass
    text = generate_latest(metrics.registry).decode()
    assert 'mistryd_request_slots{kind="waits"} 5.0' in text
    assert 'mistryd_request_slots_in_use{kind="waits"} 5.0' in text
    assert 'mistryd_request_slots_refused_total{kind="waits"} 1.0' in text
    assert 'mistryd_request_slots_in_use{kind="artifacts"} 0.0' in text
    taken[0]()
    taken[0]()  # giving a slot back twice gives it back once
    taken.append(cap.waits.take())
    with pytest.raises(Unavailable):
        cap.waits.take()
    for give_back in taken[1:]:
        give_back()
    assert 'mistryd_request_slots_in_use{kind="waits"} 0.0' in generate_latest(metrics.registry).decode()
