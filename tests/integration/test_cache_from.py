"""Every BuildInfo says which build its /data/cache came from (`CacheFrom`), on both storage
adapters, and the build page links to it (docs/provenance.md)."""

from __future__ import annotations

import json
import re

import pytest
import requests

pytestmark = pytest.mark.docker


def job_json(srv, project: str, build_id: str) -> dict:
    r = requests.get(f"{srv.url}/job/{project}/{build_id}",
                     headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_cache_from_names_the_build_the_cache_came_from(start_server, fs_kind):
    srv = start_server(projects=("cache",))
    first = srv.build("cache", group="g", params={"n": "1"})
    assert first["ExitCode"] == 0 and first["CacheFrom"] is None and not first["Incremental"]

    second = srv.build("cache", group="g", params={"n": "2"})
    assert second["Incremental"] and "build 2" in second["ContainerStdouterr"]
    source = {"Project": "cache", "Group": "g", "ID": first["ID"]}
    assert second["CacheFrom"] == source

    # the same in the record on disk, the job's JSON, the index and a cache hit's answer
    on_disk = json.loads((srv.build_path / "cache" / "ready" / second["ID"] /
                          "build_info.json").read_text())
    assert on_disk["CacheFrom"] == source
    assert job_json(srv, "cache", second["ID"])["BuildInfo"]["CacheFrom"] == source
    index = requests.get(f"{srv.url}/index/", timeout=30).json()
    assert {e["id"]: e["buildInfo"]["CacheFrom"] for e in index} == \
        {first["ID"]: None, second["ID"]: source}
    hit = srv.build("cache", group="g", params={"n": "2"})
    assert hit["Cached"] and hit["CacheFrom"] == source

    # a failed build started from the group's cache too, but is never a cache source
    failed = srv.build("cache", group="g", params={"n": "3", "fail": "yes"})
    assert failed["ExitCode"] != 0
    assert failed["CacheFrom"] == {"Project": "cache", "Group": "g", "ID": second["ID"]}
    fourth = srv.build("cache", group="g", params={"n": "4"})
    assert fourth["CacheFrom"]["ID"] == second["ID"]

    # builds without a group, and a new group's first build, start from nothing
    assert srv.build("cache", params={"n": "1"})["CacheFrom"] is None
    assert srv.build("cache", group="other", params={"n": "1"})["CacheFrom"] is None

    # the build page links to the build its cache came from
    page = requests.get(f"{srv.url}/job/cache/{second['ID']}", headers={"Accept": "text/html"},
                        timeout=30).text
    cell = re.search(r'<dd id="cache-from">(.*?)</dd>', page, re.S)
    assert cell is not None, page
    assert f'href="/job/cache/{first["ID"]}"' in cell.group(1)
    assert first["ID"][:12] in cell.group(1) and "group g" in cell.group(1)
    line = re.search(r'<dd id="differs">(.*?)</dd>', page, re.S)
    assert line is not None and re.sub(r"<[^>]+>", "", line.group(1)) == \
        f"differs from build {first['ID'][:12]}: 1 param"
    first_page = requests.get(f"{srv.url}/job/cache/{first['ID']}",
                              headers={"Accept": "text/html"}, timeout=30).text
    assert re.search(r'<dd id="cache-from"><span class="muted">none', first_page)
    assert 'id="differs"' not in first_page  # nothing was cached before it
