"""Samples, their summaries, and the table rows every measurement returns."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """min / median / p99 of repeated samples, in the row's unit."""

    n: int
    min: float
    median: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        # nearest-rank p99: with fewer than 100 samples it is the largest one, never interpolated
        rank = max(0, min(len(ordered) - 1, -(-99 * len(ordered) // 100) - 1))
        return cls(len(ordered), ordered[0], statistics.median(ordered), ordered[rank], ordered[-1])


@dataclass
class Row:
    """One line of the results table: a figure against its baseline from the same run."""

    measurement: str  # "1 cache hit", the numbering
    figure: str  # what was measured
    unit: str  # "ms", "req/s", "MB"
    value: Summary
    baseline: str  # what it is compared with
    base: Summary
    target: str  # the target, in words ("" when there is none)
    met: bool | None  # None: no target
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value.median / self.base.median if self.base.median else float("inf")

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "NOT MET")

    def to_json(self) -> dict:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 4)
        d["verdict"] = self.verdict
        return d


def timed(fn: Callable[[], object], unit: float = 1e3) -> float:
    """Wall time of one call, in ms by default."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * unit


def interleaved(calls: dict[str, Callable[[], object]], reps: int, warmup: int = 3,
                unit: float = 1e3) -> dict[str, list[float]]:
    """Time each call `reps` times, taking turns, so drift on a noisy machine hits all alike."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            samples[name].append(timed(fn, unit))
    return samples
