"""Every page in a real browser, on a wide screen and on a phone (390 px): the charts draw, text
artifacts open in the browser as text, the manifest is a page for browsers and JSON for clients,
tables turn into cards and nothing is cut off. The pictures in docs/screenshots/ come from here."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

BUILD_TIMEOUT = 90_000
PHONE = {"width": 390, "height": 844}


def overflow(page) -> int:
    """How many CSS pixels the page is wider than the window (0: nothing is cut off)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def test_charts_artifacts_and_the_phone(start_server, page, screenshots, doc_shots):
    rs = start_server(projects=("web-colours", "hello"))
    builds = [rs.build("web-colours", params={"ticks": "0", "n": str(i)}) for i in range(3)]
    failed = rs.build("web-colours", params={"ticks": "0", "fail": "yes"})
    assert [b["Status"] for b in builds] + [failed["Status"]] == ["succeeded"] * 3 + ["failed"]
    again = rs.build("web-colours", params={"ticks": "0", "n": "0"})
    assert again["Cached"] is True
    ok = builds[0]

    # the project page: one bar per finished build, coloured by outcome; a click opens the build
    page.goto(f"{rs.url}/project/web-colours")
    chart = page.locator("#durations")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart.locator(".u-legend")).to_contain_text("succeeded")
    data = page.evaluate("JSON.parse(document.getElementById('durations-data').textContent)")
    assert data["statuses"] == ["succeeded"] * 3 + ["failed"]
    assert data["failed"][:3] == [None] * 3 and data["failed"][3] > 0
    assert all(v > 0 for v in data["succeeded"][:3])
    page.screenshot(path=screenshots / "project-chart.png", full_page=True)

    # the dashboard: the hit rate and queue depth over the day, from points in the index
    page.goto(f"{rs.url}/")
    for chart_id in ("hit-rate", "queue-depth"):
        expect(page.locator(f"#{chart_id} canvas")).to_have_count(1)
    timeline = page.evaluate("JSON.parse(document.getElementById('hit-rate-data').textContent)")
    assert len(timeline["t"]) == 48 and any(n for n in timeline["requests"])
    page.screenshot(path=doc_shots / "dashboard.png")

    # text artifacts open in the browser as text (markup stays text); binary ones download
    page.goto(f"{rs.url}/job/web-colours/{ok['ID']}")
    notes = page.locator("#artifacts a.view", has_text="notes.txt")
    expect(notes).to_have_attribute("href", f"/job/web-colours/{ok['ID']}/view/notes.txt")
    expect(page.locator("#artifacts a.view", has_text="blob.bin")).to_have_count(0)
    notes.click()
    expect(page.locator("body")).to_have_text(re.compile(r"notes <script>alert\(1\)</script>"))
    r = requests.get(f"{rs.url}/job/web-colours/{ok['ID']}/view/reports/page.html", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Disposition"] == "inline"
    assert "sandbox" in r.headers["Content-Security-Policy"]
    assert r.text.startswith("<h1>not rendered</h1>")
    gone = requests.get(f"{rs.url}/job/web-colours/{ok['ID']}/view/../../etc/passwd", timeout=10)
    assert gone.status_code == 404

    # the manifest: a page for a browser, JSON for clients (curl's */*, mistry, upstream)
    page.goto(f"{rs.url}/artifacts/web-colours/{ok['ID']}/")
    table = page.locator("table.manifest")
    expect(table).to_contain_text("reports/page.html")
    expect(table.locator("tr", has_text="notes.txt").locator("a.view")).to_have_count(1)
    manifest = requests.get(f"{rs.url}/artifacts/web-colours/{ok['ID']}/", timeout=10).json()
    sha = next(e["sha256"] for e in manifest["entries"] if e["path"] == "notes.txt")
    expect(table.locator("tr", has_text="notes.txt")).to_contain_text(sha)
    as_json = requests.get(f"{rs.url}/artifacts/web-colours/{ok['ID']}/",
                           headers={"Accept": "application/json"}, timeout=10)
    assert as_json.headers["Content-Type"] == "application/json"
    page.screenshot(path=screenshots / "manifest.png", full_page=True)

    # a phone: every page fits the width; tables are cards that name their fields
    page.set_viewport_size(PHONE)
    for path, name in (("/", "dashboard"), ("/builds", "history"),
                       ("/project/web-colours", "project"),
                       (f"/job/web-colours/{failed['ID']}", "build"),
                       (f"/artifacts/web-colours/{ok['ID']}/", "manifest"),
                       (f"/find?id={ok['ID'][:1]}", "find")):
        page.goto(rs.url + path)
        page.wait_for_load_state("networkidle")
        assert overflow(page) <= 0, f"{path} is {overflow(page)} px too wide on a phone"
        page.screenshot(path=screenshots / f"phone-{name}.png", full_page=True)
    page.goto(f"{rs.url}/builds")
    row = page.locator("table.as-cards tr.build-row").first
    assert row.evaluate("el => getComputedStyle(el).display") == "block"
    assert row.locator("td[data-label=params]").evaluate(
        "el => getComputedStyle(el, '::before').content") == '"params"'
    expect(row).to_contain_text("ticks=0")  # the params are shown, not hidden
    page.goto(f"{rs.url}/")
    page.screenshot(path=doc_shots / "dashboard-phone.png")


def test_a_live_build_on_a_phone(start_server, page, doc_shots):
    rs = start_server(projects=("web-colours",))
    page.set_viewport_size(PHONE)
    build_id = rs.post_job({"project": "web-colours", "params": {"ticks": "5"}},
                           asynchronous=True).json()["id"]
    page.goto(f"{rs.url}/job/web-colours/{build_id}")
    expect(page.locator("#log-lines")).to_contain_text("tick 2", timeout=BUILD_TIMEOUT)
    assert overflow(page) <= 0
    page.locator("#log-section").scroll_into_view_if_needed()
    page.screenshot(path=doc_shots / "build-live-phone.png")
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)


def test_a_push_builds_page_and_the_repository_filter(start_server, page, screenshots):
    """A push build's page shows its repository, branch, commit (linked to the view URL), task,
    trigger and message; the history filters by repository. A dry run: no git server is asked."""
    repo, commit = "example-org/example-repo", "0123456789abcdef0123456789abcdef01234567"
    url = "git://127.0.0.1:9/example-repo.git"  # never fetched in a dry run
    rs = start_server(projects=("hello",), dry_run=True, repositories={repo: {
        "url": url, "project": "hello", "branches": {"master/docs": "make docs"}}})
    other = rs.build("hello", params={"n": "1"})
    view = f"https://git.example.com/{repo}/commit/{commit}"
    r = requests.post(f"{rs.url}/", timeout=60, json={
        "scm": "git", "repositoryUrl": url, "project": repo, "target": "master", "task": "docs",
        "commit": commit, "viewUrl": view, "message": "Docs: <b>not bold</b>"})
    assert r.status_code == 202, r.text
    page.goto(r.json()["url"])
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    page.reload()  # the finished page: from the build's own record
    expect(page.locator("#push-repository")).to_have_text(repo)
    expect(page.locator("#push-branch")).to_have_text("master")
    expect(page.locator("#push-commit a")).to_have_attribute("href", view)
    expect(page.locator("#push-commit a")).to_have_text(commit[:12])
    expect(page.locator("#push-task")).to_have_text("docs")
    expect(page.locator("#push-trigger")).to_have_text("POST /")
    expect(page.locator("#push-message")).to_have_text("Docs: <b>not bold</b>")  # as text
    expect(page.locator("#retry, #rebuild")).to_have_count(0)  # POST /jobs cannot redo a push
    page.screenshot(path=screenshots / "push-build.png", full_page=True)

    page.locator("#push-repository a").click()  # the history of the repository's builds
    expect(page).to_have_url(re.compile(r"/builds\?repository=example-org(/|%2F)example-repo$"))
    rows = page.locator("table.builds tr.build-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(".repository=" + repo)
    expect(page.locator("select[name=repository] option[selected]")).to_have_text(repo)
    page.goto(f"{rs.url}/builds?repository=nobody/else")
    expect(page.locator("table.builds")).to_contain_text("No builds match these filters.")
    index = requests.get(f"{rs.url}/index/", params={"repository": repo}, timeout=10).json()
    assert [b["id"] for b in index] == [r.json()["id"]] and other["ID"] not in str(index)
