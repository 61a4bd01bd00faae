"""deploy/Dockerfile as docs/deploy.md runs it: the image that `make image` builds serves a
token-protected mistryd that builds with the host's Docker engine through its socket, keeps its
builds in a host folder mounted at the same path, and stops cleanly on `docker stop`."""

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import requests
from support import BUILD, READ, TOKENS, bearer, copy_project, docker_cli, free_port, wait_for

from mistryd.docker_runner import remove_instance_images

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image(docker_engine):
    tag = f"mistryd-test-image:{uuid.uuid4().hex[:8]}"
    out = subprocess.run(["bash", str(REPO / "deploy" / "build-image.sh"), tag],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == tag
    yield tag
    docker_cli("rmi", "-f", tag)


def test_the_image_serves_and_builds_with_the_hosts_docker_engine(image):
    # the builds' folder must have the same path inside and outside: the engine mounts it
    root = Path(tempfile.mkdtemp(prefix="mistryd-image-", dir="/var/tmp"))
    name, port = f"mistryd-test-{uuid.uuid4().hex[:8]}", free_port()
    (root / "projects").mkdir()
    copy_project(root / "projects", "hello")
    (root / "config.json").write_text(json.dumps({
        "projects_path": str(root / "projects"), "build_path": str(root / "builds"),
        "addr": "0.0.0.0:8462", "filesystem": "plain", "tokens": TOKENS,
        "allowed_hosts": ["127.0.0.1"]}))
    url = f"http://127.0.0.1:{port}"
    try:
        started = docker_cli("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8462",
                             "-v", "/var/run/docker.sock:/var/run/docker.sock",
                             "-v", f"{root}:{root}", image, "--config", str(root / "config.json"))
        assert started.returncode == 0, started.stderr

        def up() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=5).ok
            except (requests.ConnectionError, requests.Timeout):
                return False

        wait_for(up, timeout=60)
        assert requests.post(f"{url}/jobs", json={"project": "hello"}, timeout=10).status_code == 401
        info = requests.post(f"{url}/jobs", json={"project": "hello", "params": {"name": "Ada"}},
                             headers=bearer(BUILD), timeout=300).json()
        assert info["Status"] == "succeeded", info
        assert info["Path"].startswith(str(root / "builds"))
        assert "param name=Ada" in info["ContainerStdouterr"]
        out = requests.get(f"{url}/artifacts/hello/{info['ID']}/out.txt", headers=bearer(READ),
                           timeout=10)
        assert out.text == "hello\n"
        assert (Path(info["Path"]) / "out.txt").read_text() == "hello\n"  # on the host

        stopped = docker_cli("stop", "-t", "30", name)
        assert stopped.returncode == 0, stopped.stderr
        assert docker_cli("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        log = docker_cli("logs", name)
        assert "access control on: 3 token(s)" in log.stderr, log.stderr
        assert f"build hello/{info['ID']} succeeded after" in log.stderr, log.stderr
    finally:
        docker_cli("rm", "-f", name)
        remove_instance_images(root / "builds")
        shutil.rmtree(root, ignore_errors=True)
