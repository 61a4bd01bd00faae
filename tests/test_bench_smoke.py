"""The benchmark harness end to end on one tiny measurement, so it cannot rot unnoticed.
Figures from --quick mean nothing, so nothing here checks a timing."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.docker


def test_one_measurement_runs_and_reports(docker_engine, tmp_path):
    assert main(["--quick", "--only", "hit_latency", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {}
    rows = results["rows"]
    assert [r["measurement"] for r in rows] == ["1 cache hit"] * len(rows) and len(rows) == 3
    for row in rows:
        assert row["value"]["n"] >= 3 and row["value"]["min"] <= row["value"]["median"]
        assert row["verdict"] in ("met", "NOT MET")
    table = (tmp_path / "results.md").read_text()
    assert "| 1 cache hit | hit POST /jobs" in table and "Targets met:" in table


def test_unknown_measurement_is_refused():
    with pytest.raises(SystemExit):
        main(["--only", "nonsense"])
