"""The example projects of projects/ as `make run` serves them (config.sample.json's mounts and
container environment): each one's second build in a group starts from the first one's cache
and only does what changed. Real image builds, real downloads from PyPI and npm."""

import json
import re
import shutil
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((REPO / "config.sample.json").read_text())


@pytest.fixture
def serve_example(start_server, tmp_path):
    def start(name: str):
        projects = tmp_path / "examples"
        projects.mkdir()
        shutil.copytree(REPO / "projects" / name, projects / name)
        return start_server(projects_path=projects, network_mode=SAMPLE["network_mode"],
                            mounts=SAMPLE["mounts"], container_env=SAMPLE["container_env"])
    return start


def two_builds(srv, project: str, second_params: dict[str, str]) -> tuple[dict, dict]:
    first = srv.build(project, group="app")
    second = srv.build(project, group="app", params=second_params)
    for info in (first, second):
        assert info["Status"] == "succeeded", info["ContainerStdouterr"][-3000:]
    assert (first["Incremental"], second["Incremental"]) == (False, True)
    return first["ContainerStdouterr"], second["ContainerStdouterr"]


def number(pattern: str, log: str) -> int:
    found = re.search(pattern, log)
    assert found, log[-3000:]
    return int(found.group(1))


def test_pip_deps_second_build_installs_only_the_new_package(serve_example):
    srv = serve_example("pip-deps")
    v2 = (REPO / "projects" / "pip-deps" / "v2" / "requirements.txt").read_text()
    first, second = two_builds(srv, "pip-deps", {"requirements.txt": v2})
    assert number(r"venv: (\d+) package\(s\) installed by earlier", first) == 0
    installed = number(r"venv: (\d+) package\(s\) installed by this build", first)
    assert installed >= 5  # requests and what it needs
    assert number(r"venv: (\d+) package\(s\) installed by earlier", second) == installed
    assert number(r"venv: (\d+) package\(s\) installed by this build", second) == 1
    assert "six==1.16.0" in second


def test_yarn_deps_second_build_downloads_only_the_new_package(serve_example):
    srv = serve_example("yarn-deps")
    v2 = REPO / "projects" / "yarn-deps" / "v2"
    first, second = two_builds(srv, "yarn-deps", {"package.json": (v2 / "package.json").read_text(),
                                                  "yarn.lock": (v2 / "yarn.lock").read_text()})
    assert number(r"yarn cache: (\d+) package\(s\) from earlier", first) == 0
    downloaded = number(r"yarn cache: (\d+) package\(s\) downloaded by this build", first)
    assert downloaded == 7  # chalk and ms with chalk's dependencies: yarn.lock's entries
    assert number(r"yarn cache: (\d+) package\(s\) from earlier", second) == downloaded
    assert number(r"yarn cache: (\d+) package\(s\) downloaded by this build", second) == 1


def test_assets_second_build_compiles_only_what_changed(serve_example):
    srv = serve_example("assets")
    first = srv.build("assets", group="app")
    second = srv.build("assets", group="app", params={"brand_color": "#c2410c"})
    assert second["Incremental"] and second["Status"] == "succeeded", second
    assert "assets: 3 compiled, 0 reused" in first["ContainerStdouterr"], first
    assert "assets: 1 compiled, 2 reused" in second["ContainerStdouterr"], second
    url = f"{srv.url}/artifacts/assets/{second['ID']}"
    manifest = requests.get(f"{url}/manifest.json", timeout=10).json()
    assert sorted(manifest) == ["app.css", "app.js", "framework.css"]
    css = requests.get(f"{url}/{manifest['app.css']}", timeout=10)
    assert css.status_code == 200 and "#c2410c" in css.text
    assert requests.get(f"{url}/{manifest['framework.css']}.gz", timeout=10).status_code == 200
    # a colour that is not one is refused by the build, not pasted into the stylesheet
    bad = srv.build("assets", group="app", params={"brand_color": "red; } body { x: y"})
    assert bad["Status"] == "failed" and "brand_color must be a colour" in bad["ContainerStderr"]
