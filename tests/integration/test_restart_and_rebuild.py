"""Start-up clean-up after a crash, stale containers, and rebuilding without any cache."""

import json
import subprocess
import sys

import docker
import pytest

from mistryd.config import from_dict
from mistryd.docker_runner import INSTANCE_LABEL, LABEL, DockerRunner
from mistryd.layout import Layout
from mistryd.store import Status, Store


def test_start_up_removes_pending_folders_orphans_and_marks_unfinished_builds(start_server,
                                                                            build_root, tmp_path):
    leftover = build_root / "hello" / "pending" / "deadbeef" / "data"
    leftover.mkdir(parents=True)
    (leftover / "half-written").write_text("x")
    Store(Layout(build_root)).record_queued("hello", "cafe", "", {}, False)
    client = docker.from_env()
    mine = DockerRunner(from_dict({"projects_path": str(tmp_path), "build_path": str(build_root)}))
    orphan = client.containers.create("debian:bookworm-slim", "sleep 60",
                                      labels={LABEL: "1", INSTANCE_LABEL: mine.instance})
    other = client.containers.create("debian:bookworm-slim", "sleep 60",
                                     labels={LABEL: "1", INSTANCE_LABEL: "another-server"})
    try:
        srv = start_server()
        assert not (build_root / "hello" / "pending" / "deadbeef").exists()
        assert orphan.id not in {c.id for c in client.containers.list(all=True)}
        assert other.id in {c.id for c in client.containers.list(all=True)}  # not ours: kept
        row = srv.server.store.get("hello", "cafe")  # its key no longer matches the project
        assert row.status is Status.ABANDONED and "queued again as" in row.reason
        assert srv.build("hello")["ExitCode"] == 0
    finally:
        other.remove(force=True)


def test_a_stale_container_with_the_jobs_name_does_not_break_the_build(start_server):
    srv = start_server()
    job = srv.server.make_job(__import__("mistryd.jobs").jobs.JobRequest("hello"))
    name = srv.server.runner.container_name(job.id)
    stale = docker.from_env().containers.create("debian:bookworm-slim", "true", name=name)
    info = srv.build("hello")
    assert info["ID"] == job.id and info["ExitCode"] == 0
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(stale.id)


def test_rebuild_bypasses_the_result_cache_and_replaces_the_result(start_server):
    srv = start_server()
    first = srv.build("hello")
    again = srv.build("hello", rebuild=True)
    assert again["ID"] == first["ID"] and not again["Cached"]
    assert again["StartedAt"] != first["StartedAt"]
    assert "building image" in again["ContainerStdouterr"] and "without cache" in \
        again["ContainerStdouterr"]
    after = srv.build("hello")
    assert after["Cached"] and after["StartedAt"] == again["StartedAt"]
    assert len(list((srv.build_path / "hello" / "ready").iterdir())) == 1
    assert not list((srv.build_path / "hello" / "pending").iterdir())


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mistryd.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture
def config_file(tmp_path):
    projects = tmp_path / "projects"
    from support import copy_project

    projects.mkdir()
    copy_project(projects, "hello")
    copy_project(projects, "bad-dockerfile")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"projects_path": "projects", "build_path": "builds"}))
    return path


def test_rebuild_command_rebuilds_images_and_fails_on_unknown_projects(config_file, docker_engine):
    ok = run_cli("rebuild", "--config", str(config_file), "--project", "hello", "--verbose")
    assert ok.returncode == 0, ok.stderr
    assert "Rebuilding hello" in ok.stderr and "Step 1/" in ok.stderr
    bad = run_cli("rebuild", "--config", str(config_file), "--project", "bad-dockerfile",
                  "--project", "hello", "--fail-fast")
    assert bad.returncode == 1 and "bad-dockerfile" in bad.stderr
    assert "Rebuilding hello" not in bad.stderr  # --fail-fast stopped at the first failure
    unknown = run_cli("--config", str(config_file), "rebuild", "--project", "nope")
    assert unknown.returncode == 2 and "Unknown project 'nope'" in unknown.stderr


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"projects_path": str(tmp_path), "build_path": str(tmp_path),
                                "job_concurrency": "many"}))
    r = run_cli("--config", str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == 'mistryd: config: job_concurrency: must be an integer, got "many"'
    assert run_cli("--version").stdout.startswith("mistryd, version")
