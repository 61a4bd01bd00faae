"""A second `mistryd` on the same build_path or port exits 2 with one line, and touches nothing of
the first one's (it used to remove its pending builds and kill its containers, then die with a
traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from support import free_port, make_setup, wait_for

pytestmark = pytest.mark.docker


def run_second(config_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mistryd.cli", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=60)


def test_a_second_server_leaves_the_first_ones_builds_alone(tmp_path):
    setup = make_setup(tmp_path, ("sleeper",))
    first = setup.start()
    try:
        job = requests.post(f"{setup.url}/jobs?async", json={"project": "sleeper"}, timeout=30)
        build_id = job.json()["id"]

        def running() -> bool:
            view = requests.get(f"{setup.url}/job/sleeper/{build_id}", timeout=5,
                                headers={"Accept": "application/json"}).json()
            return view["Status"] == "running"

        wait_for(running, timeout=120)
        # same build_path, another port
        other = json.loads(setup.config.read_text()) | {"addr": f"127.0.0.1:{free_port()}"}
        second_config = tmp_path / "second.json"
        second_config.write_text(json.dumps(other))
        out = run_second(second_config)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().count("\n") == 0, out.stderr  # one line, no traceback
        assert f"in use by another mistryd (pid {first.pid})" in out.stderr
        # same port: refused before anything else happens
        out = run_second(setup.config)
        assert out.returncode == 2 and "already in use" in out.stderr, out.stderr
        info = requests.post(f"{setup.url}/jobs", json={"project": "sleeper"}, timeout=300).json()
        assert info["ID"] == build_id and info["Status"] == "succeeded", info
    finally:
        first.terminate()
        first.wait(60)
