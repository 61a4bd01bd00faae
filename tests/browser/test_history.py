"""History at scale: 10,000 builds in the index, paged and filtered in the browser, and pages that
cost a handful of SQLite queries and no build folder reads."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from mistryd.web import create_app

from .conftest import seed_builds, seeded_id, seeded_status

N = 10_000


@pytest.fixture
def seeded(start_server):
    rs = start_server(projects=("hello",))
    seed_builds(rs.server.store, N)
    return rs


def test_pagination_filters_and_jump(seeded, page, screenshots):
    rs = seeded
    rows = page.locator("table.builds tbody tr.build-row")

    page.goto(f"{rs.url}/")
    expect(page.locator("#counts")).to_contain_text(f"{sum(1 for i in range(N) if i % 7):,}")
    page.get_by_role("link", name="History", exact=True).click()
    expect(page.locator(".pager").first).to_contain_text("Page 1 of 200")
    expect(page.locator(".pager").first).to_contain_text("of 10,000")
    expect(rows).to_have_count(50)
    expect(rows.first.locator("a.id")).to_have_text(seeded_id(N - 1)[:12])
    expect(rows.last.locator("a.id")).to_have_text(seeded_id(N - 50)[:12])

    page.locator(".pager").first.get_by_role("link", name="Older →").click()
    expect(page).to_have_url(re.compile(r"/builds\?page=2$"))
    expect(page.locator(".pager").first).to_contain_text("Page 2 of 200")
    expect(rows.first.locator("a.id")).to_have_text(seeded_id(N - 51)[:12])
    page.locator(".pager").first.get_by_role("link", name="← Newer").click()
    expect(rows.first.locator("a.id")).to_have_text(seeded_id(N - 1)[:12])

    # Filters: state, then project and group together; paging keeps them.
    failed = [i for i in range(N) if seeded_status(i).value == "failed"]
    page.locator("form.filters select[name=status]").select_option("failed")
    page.locator("form.filters button").click()
    expect(page.locator(".pager").first).to_contain_text(f"of {len(failed):,}")
    expect(rows.locator(".status", has_text="succeeded")).to_have_count(0)
    expect(rows.locator(".status", has_text="failed")).to_have_count(50)
    page.locator(".pager").first.get_by_role("link", name="Older →").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(rows.first.locator("a.id")).to_have_text(seeded_id(failed[-51])[:12])

    page.goto(f"{rs.url}/builds")
    page.locator("form.filters select[name=project]").select_option("hello")
    page.locator("form.filters input[name=group]").fill("g2")
    page.locator("form.filters button").click()
    expected = [i for i in range(N) if i % 2 == 0 and i % 5 == 2]
    expect(page.locator(".pager").first).to_contain_text(f"of {len(expected):,}")
    expect(rows.first.locator("a.id")).to_have_text(seeded_id(expected[-1])[:12])
    expect(rows.locator("td", has_text=re.compile(r"^alpha$"))).to_have_count(0)
    page.screenshot(path=screenshots / "history-filtered.png", full_page=True)

    # Project page: the latest build of each group, with its params, and the project's history.
    page.goto(f"{rs.url}/project/hello")
    groups = page.locator("table.groups tr.group-row")
    expect(groups).to_have_count(5)
    newest_g0 = max(i for i in range(N) if i % 2 == 0 and i % 5 == 0)
    g0 = groups.filter(has_text="g0")
    expect(g0.locator("a.id")).to_have_text(seeded_id(newest_g0)[:12])
    expect(g0).to_contain_text(f"ref=v{newest_g0}")
    expect(g0).to_contain_text("note=<b>seeded</b>")  # shown as text
    expect(page.locator(".pager").first).to_contain_text("of 5,000")
    page.screenshot(path=screenshots / "project.png", full_page=True)

    # Jump to a build by a prefix of its id.
    target = seeded_id(1235)  # odd: a build of "alpha", a project only the history knows
    page.locator("form.jump input[name=id]").fill(target[:10])
    page.locator("form.jump input[name=id]").press("Enter")
    expect(page).to_have_url(re.compile(f"/job/alpha/{target}$"))
    expect(page.locator("h1")).to_contain_text("alpha")
    expect(page.locator(".key")).to_have_text(target)
    expect(page.locator("#state .status")).to_have_text("succeeded")
    expect(page.locator(".timings")).to_contain_text("run 2.0 s")

    page.locator("form.jump input[name=id]").fill("zz")
    page.locator("form.jump input[name=id]").press("Enter")  # not hex: the form refuses it
    expect(page).to_have_url(re.compile(f"/job/alpha/{target}$"))
    page.goto(f"{rs.url}/find?id=ffffffffffff")
    expect(page.locator(".problem")).to_contain_text("No build id starts with 'ffffffffffff'")


def test_pages_read_the_index_only(seeded, monkeypatch):
    """Each page is a few SQL statements over the index, whatever the history's size, and no
    page lists builds by reading build folders."""
    srv = seeded.server

    def no_folder_reads(*args, **kwargs):
        raise AssertionError("a list page read a build_info.json")

    monkeypatch.setattr(srv.layout, "read_info", no_folder_reads)
    client = create_app(srv).test_client()
    statements: list[str] = []
    # The test client runs the app in this thread, so it uses this thread's SQLite connection.
    srv.store._conn().set_trace_callback(statements.append)
    pages = {
        "/": 20, "/builds": 50, f"/builds?page={N // 50}": 50, "/builds?status=failed&page=7": 50,
        "/project/hello": 50 + 5, "/project/alpha?group=g3&status=succeeded&page=2": 50 + 5,
        "/find?id=a": 50,
    }
    for url, row_count in pages.items():
        statements.clear()
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.get_data(as_text=True)
        assert html.count('class="build-row"') + html.count('class="group-row"') == row_count, url
        queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert 1 <= len(queries) <= 12, (url, queries)
        assert not any("LIMIT -1" in s for s in queries), url
        # every statement is bounded: a LIMIT on lists, COUNT(*) for totals, the kept counts
        for s in queries:
            assert "LIMIT" in s.upper() or "COUNT(*)" in s.upper() or "BUILD_COUNTS" in s.upper(), s
    srv.store._conn().set_trace_callback(None)


def test_unknown_things_are_explained_not_crashed(seeded):
    client = create_app(seeded.server).test_client()
    r = client.get("/job/hello/" + "0" * 64, headers={"Accept": "text/html"})
    assert r.status_code == 404 and "No build hello/" in r.get_data(as_text=True)
    r = client.get("/project/nope")
    assert r.status_code == 404 and "Unknown project" in r.get_data(as_text=True)
    r = client.get("/builds?status=bogus")
    assert r.status_code == 200 and 'class="build-row"' not in r.get_data(as_text=True)
    r = client.get("/builds?page=999999")  # past the end: the last page
    assert "Page 200 of 200" in r.get_data(as_text=True)
    r = client.get("/find?id=" + seeded_id(5)[:12])
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/job/alpha/{seeded_id(5)}")
    r = client.get(f"/job/hello/{seeded_id(4)}", headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.get_json()["Status"] == "succeeded"
    r = client.get(f"/job/hello/{seeded_id(4)}/out.log")
    assert r.status_code == 404  # the index knows the build; its folder is gone
