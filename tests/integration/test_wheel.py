"""The package as users install it: a plain `pip install` of a wheel (not the editable checkout)
in a fresh virtualenv, run from a folder outside the source tree, serves its pages, every static
file and its OpenAPI document and runs a build, with the runtime dependencies only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import make_setup, wait_for

from mistryd.docker_runner import remove_instance_images

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "mistryd" / "web"
# pyproject.toml's extras (test, browser, bench): none of them comes with a plain install
TOOLS = ("pytest", "ruff", "mypy", "hypothesis", "schemathesis", "playwright", "py-spy")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh virtualenv with mistryd installed from a wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"),
                    str(REPO)], check=True, cwd=root)
    wheel = next((root / "dist").glob("mistryd-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", str(wheel)], check=True)
    return root / "venv" / "bin"


def test_a_wheel_installed_into_a_fresh_virtualenv_serves_and_builds(installed, tmp_path):
    setup = make_setup(tmp_path, ("hello",))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = open(tmp_path / "mistryd.log", "ab")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen([str(installed / "mistryd"), "--config", str(setup.config)],
                            cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "mistryd.log").read_text()
            try:
                return requests.get(f"{setup.url}/healthz", timeout=5).ok
            except (requests.ConnectionError, requests.Timeout):
                return False

        wait_for(up, timeout=60)
        # the server runs from the wheel, not from this checkout
        where = subprocess.run([str(installed / "python"), "-c",
                                "import mistryd; print(mistryd.__file__)"],
                               capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
        assert not where.stdout.startswith(str(REPO / "mistryd"))

        page = requests.get(f"{setup.url}/", headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 200 and "mistryd" in page.text
        script = requests.get(f"{setup.url}/static/mistryd.js", timeout=10)
        assert script.status_code == 200 and "EventSource" in script.text
        static = sorted(p for p in (WEB / "static").iterdir() if p.is_file())
        assert len(static) >= 2
        for path in static:  # every file of the checkout's static folder, byte for byte
            served = requests.get(f"{setup.url}/static/{path.name}", timeout=10)
            assert served.status_code == 200 and served.content == path.read_bytes(), path.name
        api = requests.get(f"{setup.url}/openapi.yaml", timeout=10)
        assert api.status_code == 200 and api.text.startswith("openapi: 3")

        info = requests.post(f"{setup.url}/jobs", json={"project": "hello"}, timeout=300).json()
        assert info["Status"] == "succeeded", info
        build = requests.get(f"{setup.url}/job/hello/{info['ID']}",
                             headers={"Accept": "text/html"}, timeout=10)
        assert build.status_code == 200 and "succeeded" in build.text
        missing = requests.get(f"{setup.url}/no/such/page", headers={"Accept": "text/html"}, timeout=10)
        assert missing.status_code == 404 and "There is no page at" in missing.text
        assert subprocess.run([str(installed / "mistry"), "--help"], capture_output=True,
                              env=env, cwd=tmp_path).returncode == 0  # the client comes along
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        remove_instance_images(setup.builds)


def test_a_plain_install_brings_the_runtime_and_no_test_tools(installed):
    listed = subprocess.run([str(installed / "pip"), "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"mistryd", "flask", "waitress", "docker", "click", "requests"} <= names, names
    assert not names & set(TOOLS), names & set(TOOLS)
    # every page template and static file of the checkout is inside the installed package
    where = subprocess.run([str(installed / "python"), "-c",
                            "import mistryd.web, os; print(os.path.dirname(mistryd.web.__file__))"],
                           capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    for folder in ("templates", "static"):
        theirs = sorted(p.name for p in (Path(where) / folder).iterdir())
        ours = sorted(p.name for p in (WEB / folder).iterdir() if p.is_file())
        assert theirs == ours, folder
    assert (Path(where) / "openapi.yaml").read_bytes() == (WEB / "openapi.yaml").read_bytes()
