"""`mistry build` end to end: the real command against a real server and real Docker, covering
upstream's client scenarios."""

from __future__ import annotations

import json
import os
import subprocess

from client_helpers import MISTRY, free_port, port_of, run_mistry
from support import wait_for

from mistry_client import Client


def test_simple_build_fetches_the_artifacts(mistry, tmp_path):
    out = tmp_path / "out"
    r = mistry("build", "--project", "hello", "--target", str(out))
    assert r.returncode == 0, r.stderr
    port = port_of(mistry.server().url)
    assert f"Logs can be found at http://127.0.0.1:{port}/job/hello/" in r.stdout
    assert sorted(os.listdir(out)) == ["out.txt"]
    assert (out / "out.txt").read_text() == "hello\n"


def test_dynamic_params_reach_the_build(mistry, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("from a file\nwith = signs\n")
    out = tmp_path / "out"
    r = mistry("build", "--project", "client-params", "-t", str(out), "--",
               "--a", "b", "c=d", "e=f", "--g", "h", "--url=x=y=z", f"--notes=@{notes}")
    assert r.returncode == 0, r.stderr
    got = {p.name: p.read_text() for p in (out / "params").iterdir()}
    assert got == {"a": "b", "c": "d", "e": "f", "g": "h", "url": "x=y=z",
                   "notes": "from a file\nwith = signs\n"}


def test_two_builds_with_different_params_are_different_jobs(mistry, tmp_path):
    one = json.loads(mistry("build", "--project", "client-params", "--json-result", "-t",
                            str(tmp_path / "1"), "--", "--v", "1").stdout)
    two = json.loads(mistry("build", "--project", "client-params", "--json-result", "-t",
                            str(tmp_path / "2"), "--", "--v", "2").stdout)
    assert one["ID"] != two["ID"]
    assert (tmp_path / "1" / "params" / "v").read_text() == "1"
    assert (tmp_path / "2" / "params" / "v").read_text() == "2"


def test_json_result_is_alone_on_stdout_and_cache_then_rebuild(mistry, tmp_path):
    args = ("build", "--project", "hello", "--json-result", "-t", str(tmp_path / "o"))
    first = mistry(*args)
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)  # nothing but the JSON
    assert info["ExitCode"] == 0 and info["Cached"] is False and info["Project"] == "hello"
    assert "Logs can be found at" in first.stderr
    assert json.loads(mistry(*args).stdout)["Cached"] is True
    rebuilt = json.loads(mistry(*args, "--rebuild").stdout)
    assert rebuilt["Cached"] is False and rebuilt["ID"] == info["ID"]


def test_failed_build_shows_exit_code_and_stderr(mistry, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("untouched")
    r = mistry("build", "--project", "client-failing", "-t", str(out), "--clear-target")
    assert r.returncode == 1
    assert "Build failed with exit code 77" in r.stderr
    assert "something broke: no such widget" in r.stderr
    assert "Logs can be found at" in r.stdout
    assert os.listdir(out) == ["keep.txt"]  # nothing fetched, nothing cleared
    j = mistry("build", "--project", "client-failing", "--json-result", "-t", str(out))
    assert j.returncode == 1 and json.loads(j.stdout)["ExitCode"] == 77


def test_unknown_project(mistry):
    r = mistry("build", "--project", "no-such-project")
    assert r.returncode == 3
    assert r.stderr.strip() == "Unknown project 'no-such-project'"
    assert r.stdout == ""


def test_overloaded_server_gets_upstreams_503_message(start_server, signal_dir, tmp_path):
    # one worker, busy with a build that waits, and no backlog: no room for another build (as
    # upstream, a backlog of 0 still hands a job to an idle worker)
    server = start_server(projects=("client-waiting", "hello"), job_concurrency=1, job_backlog=0,
                          mounts={str(signal_dir): "/signal"})
    try:
        assert server.post_job({"project": "client-waiting"}, asynchronous=True).status_code == 201
        wait_for(lambda: server.server.queue.stats().running == 1, timeout=120)
        r = run_mistry(["build", "--project", "hello", "-t", str(tmp_path / "o")],
                       port=port_of(server.url))
        assert r.returncode == 3
        assert r.stderr.strip() == "(error: 503) Server is overloaded; try again later"
    finally:
        (signal_dir / "go").touch()


def test_unreachable_server_and_flags_beat_the_environment(mistry, tmp_path):
    dead = free_port()
    r = run_mistry(["build", "--project", "hello"], port=dead)
    assert r.returncode == 4 and "cannot reach mistryd" in r.stderr
    live = port_of(mistry.server().url)
    r = run_mistry(["build", "--project", "hello", "--port", str(live), "-t",
                    str(tmp_path / "o")], port=dead)
    assert r.returncode == 0, r.stderr


def test_bad_usage_exits_2(mistry):
    assert mistry("build", "--project", "hello", "--timeout", "5 minutes").returncode == 2
    assert mistry("build", "--project", "hello", "--", "--k").returncode == 2
    assert mistry("build").returncode == 2
    assert mistry("build", "--project", "hello", "--transport", "ftp").returncode == 2


def test_clear_target(mistry, tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    (out / "sub" / "old.txt").write_text("old")
    (out / "out.txt").write_text("to be replaced")
    r = mistry("build", "--project", "hello", "-t", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["out.txt", "stale.txt", "sub"]  # merged, as upstream
    assert (out / "out.txt").read_text() == "hello\n"
    r = mistry("build", "--project", "hello", "-t", str(out), "--clear-target")
    assert r.returncode == 0, r.stderr
    assert os.listdir(out) == ["out.txt"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".mistry-")] == []


def test_default_target_is_the_working_directory(mistry, tmp_path):
    r = mistry("build", "--project", "hello", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "hello\n"


def test_timeout(waiting_server, signal_dir):
    port = port_of(waiting_server.url)
    r = run_mistry(["build", "--project", "client-waiting", "--timeout", "1s"], port=port)
    assert r.returncode == 5
    assert "The build did not finish after 1s" in r.stderr
    (signal_dir / "go").touch()
    job = Client("127.0.0.1", port).submit("client-waiting")  # joins the build still running
    info = Client("127.0.0.1", port).wait("client-waiting", job.id, timeout=60)
    assert info["ExitCode"] == 0


def test_no_wait_schedules_and_the_job_appears_later(waiting_server, signal_dir, tmp_path):
    port = port_of(waiting_server.url)
    r = run_mistry(["build", "--project", "client-waiting", "--no-wait", "--json-result",
                    "-t", str(tmp_path / "o")], port=port)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    client = Client("127.0.0.1", port)
    assert client.job("client-waiting", job["ID"])["State"] == "pending"  # still waiting
    assert not (tmp_path / "o").exists()  # nothing fetched
    (signal_dir / "go").touch()
    info = client.wait("client-waiting", job["ID"], timeout=60)
    assert info["ExitCode"] == 0
    assert client.job("client-waiting", job["ID"])["State"] == "ready"


def test_verbose_streams_the_log_while_the_build_runs(waiting_server, signal_dir, tmp_path):
    env = {**os.environ, "MISTRY_PORT": str(port_of(waiting_server.url))}
    proc = subprocess.Popen([str(MISTRY), "build", "--project", "client-waiting", "-v", "-t",
                             str(tmp_path / "o")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = []
        for line in proc.stdout:  # blocks until the build's first line comes through live
            seen.append(line)
            if line.strip() == "waiting for the signal":
                break
        assert proc.poll() is None, "mistry exited before the build could finish"
        (signal_dir / "go").touch()
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    output = "".join(seen) + rest
    assert output.index("waiting for the signal") < output.index("got the signal") \
        < output.index("Logs can be found at")
    assert (tmp_path / "o" / "ok.txt").read_text() == "ok\n"


def test_status_and_logs_commands(mistry, tmp_path):
    info = json.loads(mistry("build", "--project", "hello", "--json-result", "-t",
                             str(tmp_path / "o")).stdout)
    s = mistry("status", "hello", info["ID"])
    assert s.returncode == 0, s.stderr
    view = json.loads(s.stdout)
    assert view["State"] == "ready" and view["Status"] == "succeeded"
    log = mistry("logs", "hello", info["ID"])
    assert log.returncode == 0 and "hello from the build" in log.stdout
    follow = mistry("logs", "-f", "hello", info["ID"])
    assert follow.returncode == 0 and follow.stdout == log.stdout
    assert mistry("status", "hello", "0" * 64).returncode == 3
