"""Builds through the real HTTP API into real Docker: upstream's scenarios and ours."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from mistryd.jobs import IMAGE_BUILD_FAILED


def test_first_build_then_cached(start_server):
    srv = start_server()
    first = srv.build("hello")
    assert first["ExitCode"] == 0 and not first["Cached"] and not first["Incremental"]
    assert (Path(first["Path"]) / "out.txt").read_text() == "hello\n"
    assert first["URL"] == f"job/hello/{first['ID']}"
    second = srv.build("hello")
    assert second["Cached"] and second["ID"] == first["ID"]
    assert second["ContainerStdouterr"] == first["ContainerStdouterr"]


def test_params_reach_the_build_and_make_separate_jobs(start_server):
    srv = start_server()
    a = srv.build("hello", params={"colour": "red", "_secret": "s1"})
    b = srv.build("hello", params={"colour": "blue"})
    assert a["ID"] != b["ID"]
    assert "param colour=red" in a["ContainerStdouterr"]
    assert "param _secret=s1" in a["ContainerStdouterr"]  # opaque params reach /data/params too
    ready = srv.build_path / "hello" / "ready" / a["ID"] / "data" / "params"
    assert (ready / "colour").read_text() == "red"  # exactly the value, no newline
    # an opaque param does not change the job: answered from cache
    c = srv.build("hello", params={"colour": "red", "_secret": "s2"})
    assert c["Cached"] and c["ID"] == a["ID"]


def test_exit_code_and_stderr_passed_through_and_never_cached(start_server):
    srv = start_server(projects=("failing",))
    first = srv.build("failing")
    assert first["ExitCode"] == 77
    assert first["ContainerStderr"] == "something went wrong\n"
    assert "about to fail" in first["ContainerStdouterr"]
    second = srv.build("failing")
    assert not second["Cached"] and second["ExitCode"] == 77
    assert not (srv.build_path / "failing" / "latest").exists()


def test_image_build_failure_is_recorded_cleanly_every_time(start_server):
    srv = start_server(projects=("bad-dockerfile",))
    for _ in range(3):
        info = srv.build("bad-dockerfile")
        assert info["ExitCode"] == IMAGE_BUILD_FAILED
        assert "exit 3" in info["ErrBuild"]
        assert "exit 3" in info["ContainerStdouterr"]  # the failing line is in the log
        assert not info["Cached"]
        ready = srv.build_path / "bad-dockerfile" / "ready" / info["ID"]
        assert json.loads((ready / "build_info.json").read_text())["Status"] == "failed"
    assert not list((srv.build_path / "bad-dockerfile" / "pending").iterdir())


def test_log_in_json_equals_out_log_which_holds_no_json(start_server):
    srv = start_server()
    info = srv.build("hello")
    out_log = (srv.build_path / "hello" / "ready" / info["ID"] / "out.log").read_text()
    assert info["ContainerStdouterr"] == out_log
    assert "hello from the build" in out_log
    for line in out_log.splitlines():
        assert not line.lstrip().startswith("{"), line


def test_copy_of_a_subfolder(start_server):
    srv = start_server(projects=("subfolder",))
    info = srv.build("subfolder")
    assert info["ExitCode"] == 0
    assert (Path(info["Path"]) / "nested" / "data.txt").read_text() == "from a subfolder\n"


def test_changing_a_project_file_makes_a_new_job_but_mtimes_do_not(start_server):
    import os

    srv = start_server()
    first = srv.build("hello")
    os.utime(srv.projects_path / "hello" / "build.sh", (1, 1))
    assert srv.build("hello")["Cached"]
    with open(srv.projects_path / "hello" / "build.sh", "a") as f:
        f.write("echo changed\n")
    changed = srv.build("hello")
    assert changed["ID"] != first["ID"] and not changed["Cached"]
    assert "changed" in changed["ContainerStdouterr"]


def test_concurrent_bootstrap_of_several_projects(start_server):
    srv = start_server(projects=("hello", "subfolder", "failing"), job_concurrency=3)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: srv.build(p), ["hello", "subfolder", "failing"] * 2))
    codes = {r["Project"]: r["ExitCode"] for r in results}
    assert codes == {"hello": 0, "subfolder": 0, "failing": 77}


def test_hundred_concurrent_mixed_requests_all_succeed(start_server):
    srv = start_server(job_concurrency=2, job_backlog=10)
    bodies = [{"project": "hello", "params": {"n": str(i % 5)}} for i in range(100)]
    with ThreadPoolExecutor(25) as pool:
        responses = list(pool.map(srv.post_job, bodies))
    assert {r.status_code for r in responses} == {201}
    assert {r.json()["ExitCode"] for r in responses} == {0}, {r.json()["ErrBuild"] for r in responses}
    assert len({r.json()["ID"] for r in responses}) == 5
    started = srv.server.metrics.builds_started.value("hello")
    assert started == 5


def test_build_arg_uid_reaches_dockerfiles_that_declare_it(start_server):
    import os

    srv = start_server(projects=("uid-arg", "hello"))
    info = srv.build("uid-arg")
    from mistryd.config import BUILD_UID

    expected = BUILD_UID if os.getuid() == 0 else os.getuid()  # never root
    assert (Path(info["Path"]) / "uid.txt").read_text() == f"built for uid {expected}\n"
    assert "were not consumed" not in srv.build("hello")["ContainerStdouterr"]


def test_a_long_log_arrives_whole_on_a_busy_machine(start_server):
    """A build that prints 100,000 lines and exits at once, while every core is busy: its log
    holds every line. (Following Docker's log file lost the end of such a log about one time in
    three on a loaded machine; the stream attached before the start does not.)"""
    srv = start_server(projects=("web-longlog",))
    expected = "".join(f"line {i}\n" for i in range(1, 100_001))
    with busy_cores():
        for attempt in range(4):  # params make each one a new build
            info = srv.build("web-longlog", params={"attempt": str(attempt)})
            assert info["ExitCode"] == 0, info["ContainerStdouterr"][-500:]
            out_log = srv.build_path / "web-longlog" / "ready" / info["ID"] / "out.log"
            text = out_log.read_text()
            assert text.endswith(expected), (attempt, text[-40:])


@contextmanager
def busy_cores():
    """Keep every core of the machine busy (one spinning process each) for the block."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2 * (os.cpu_count() or 2))]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()
