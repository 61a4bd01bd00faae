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


def test_a_fetched_tree_is_checked_against_the_build(tmp_path):
    """The delivery measurements check every fetch: a fast wrong copy must not pass."""
    import os
    import shutil

    from bench.delivery import Expected

    source = tmp_path / "artifacts"
    (source / "pkg" / "bin").mkdir(parents=True)
    (source / "pkg" / "bin" / "cli.js").write_bytes(b"#!/usr/bin/env node\n")
    os.chmod(source / "pkg" / "bin" / "cli.js", 0o755)
    (source / "pkg" / "big.bin").write_bytes(os.urandom(17 << 20))  # checked by windows
    os.symlink("../pkg/bin/cli.js", source / "cli")
    expect = Expected(source)
    def flip_a_byte(t):
        with open(t / "pkg" / "big.bin", "r+b") as f:
            f.seek((17 << 20) // 3)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 1]))

    for spoil in (lambda t: (t / "pkg" / "bin" / "cli.js").write_bytes(b"#!/usr/bin/env nodx\n"),
                  flip_a_byte,
                  lambda t: os.chmod(t / "pkg" / "bin" / "cli.js", 0o644),
                  lambda t: (t / "cli").unlink(),
                  lambda t: (t / "extra").write_bytes(b""),
                  lambda t: os.truncate(t / "pkg" / "big.bin", 16 << 20)):
        target = tmp_path / "target"
        shutil.copytree(source, target, symlinks=True)
        expect.check(target)
        spoil(target)
        with pytest.raises(RuntimeError):
            expect.check(target)
        shutil.rmtree(target)
