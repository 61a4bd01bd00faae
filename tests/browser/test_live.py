"""The build page follows a running build: lines arrive as they are printed, a dropped connection
resumes without losing or repeating a line, and the final state appears without a reload."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

BUILD_TIMEOUT = 90_000  # ms: an image build plus a six-second container


def test_dashboard_then_live_log_to_final_state(start_server, page, drop_proxy, screenshots):
    rs = start_server(projects=("hello", "web-ticker"))
    proxy = drop_proxy(rs.url)

    page.goto(proxy.url + "/")
    expect(page.locator("#counts")).to_contain_text("cache hit rate")
    expect(page.get_by_text("Nothing is running.")).to_be_visible()

    r = rs.post_job({"project": "web-ticker", "group": "nightly", "params": {"ref": "main"}},
                    asynchronous=True)
    assert r.status_code == 201, r.text
    build_id = r.json()["id"]

    # The dashboard lists the new build as running or queued; open it from there.
    page.goto(proxy.url + "/")
    row = page.locator("tr.build-row", has=page.locator(f"a[href$='{build_id}']"))
    expect(row).to_contain_text("web-ticker")
    expect(row.locator(".status")).to_have_text(re.compile("running|queued"))
    page.screenshot(path=screenshots / "dashboard-running.png", full_page=True)
    row.locator("a.id").click()
    expect(page).to_have_url(re.compile(f"/job/web-ticker/{build_id}$"))
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    log = page.locator("#log")
    expect(page.locator("#log-live")).to_be_visible()
    expect(log).to_contain_text("tick 1", timeout=BUILD_TIMEOUT)
    expect(log).to_contain_text("tick 2", timeout=BUILD_TIMEOUT)
    assert "tick 6" not in log.inner_text()  # still running: these lines were streamed live

    # Cut the connection mid-build: the browser reconnects with Last-Event-ID.
    assert proxy.drop_all() > 0
    expect(log).to_contain_text("tick 5", timeout=BUILD_TIMEOUT)

    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    expect(page.locator("#artifacts")).to_contain_text("result.txt")
    expect(page.locator("#artifacts")).to_contain_text("reports/zeros.bin")
    expect(page.locator("#exit-code")).to_have_text("0")
    expect(page.locator("#log-live")).to_be_hidden()
    expect(page.locator(".timings")).to_contain_text(re.compile(r"run\s+\d"))
    assert page.evaluate("window.__sameDocument") is True

    # Every line of the log exactly once, in order, and nothing else.
    full = requests.get(f"{rs.url}/job/web-ticker/{build_id}/out.log", timeout=10)
    assert full.status_code == 200
    shown = [s.removesuffix("\n") for s in page.locator("#log .ln").all_text_contents()]
    assert shown == full.text.splitlines()
    assert [s for s in shown if s.startswith("tick ")] == [f"tick {i}" for i in range(1, 7)]

    resumed = [h for h in proxy.requests_for("/log/")
               if re.search(r"^last-event-id: \d+\r?$", h, re.IGNORECASE | re.MULTILINE)]
    assert resumed, proxy.requests_for("/log/")
    # the page itself was asked for twice: its load, and once after the `end` event for the
    # final summary and artifacts (the end comes after the record: no retries)
    assert len(proxy.requests_for(f"/job/web-ticker/{build_id} ")) == 2

    # The artifact links point at the artifacts blueprint, with the sizes the folder has.
    sizes = page.locator("#artifacts tr", has_text="zeros.bin")
    expect(sizes).to_contain_text("2.9 KiB")
    row = page.locator("#artifacts tr", has_text="result.txt")
    assert row.locator("a.download").get_attribute("href") == \
        f"/artifacts/web-ticker/{build_id}/result.txt"
    # a text file opens in the browser (docs/web.md, "Artifacts")
    assert row.locator("a.view").get_attribute("href") == \
        f"/job/web-ticker/{build_id}/view/result.txt"
    page.screenshot(path=screenshots / "build-succeeded.png", full_page=True)

    # The same request again is answered from the cache: half of the requests were hits.
    again = rs.build("web-ticker", group="nightly", params={"ref": "main"})
    assert again["Cached"] is True
    page.goto(proxy.url + "/")
    expect(page.locator("#count-running")).to_have_text("0")
    expect(page.locator("#cache-rate")).to_contain_text("50%")
    expect(page.locator("#cache-rate")).to_contain_text("1 of 2 build requests")
    page.screenshot(path=screenshots / "dashboard.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=screenshots / "dashboard-phone.png", full_page=True)
    page.goto(f"{proxy.url}/job/web-ticker/{build_id}")
    page.screenshot(path=screenshots / "build-phone.png", full_page=True)


def test_long_log_shows_the_tail_and_offers_the_whole(start_server, page, screenshots):
    rs = start_server(projects=("web-longlog",))
    r = rs.post_job({"project": "web-longlog"}, asynchronous=True)
    build_id = r.json()["id"]
    page.goto(f"{rs.url}/job/web-longlog/{build_id}")
    # opened while it runs (printing 100,000 lines takes seconds): the lines stream in, and the
    # page keeps only the newest 2,000 of them
    expect(page.locator("#build")).to_have_attribute("data-live", "true")

    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    # the `end` event came after the last line: the page shows the tail the stream delivered
    expect(page.locator("#build")).to_have_attribute("data-live", "false")
    lines = page.locator("#log .ln")
    expect(lines).to_have_count(2000)
    expect(lines.last).to_have_text("line 100000\n", timeout=BUILD_TIMEOUT)
    expect(lines.first).to_have_text("line 98001\n")
    expect(page.locator("#log-note")).to_be_visible()

    page.reload()  # the server renders the same tail
    expect(lines).to_have_count(2000)
    expect(lines.first).to_have_text("line 98001\n")
    expect(lines.last).to_have_text("line 100000\n")
    expect(page.locator("#log-note")).to_contain_text("earlier output not shown")

    with page.expect_download() as download:
        page.locator("#log-download").click()
    text = download.value.path().read_text(encoding="utf-8")
    numbered = [line for line in text.splitlines() if line.startswith("line ")]
    assert numbered == [f"line {i}" for i in range(1, 100_001)]
    assert download.value.suggested_filename == f"web-longlog-{build_id[:12]}.log"
    page.screenshot(path=screenshots / "build-long-log.png")


def test_queued_build_page_follows_it_to_the_end(start_server, page):
    rs = start_server(projects=("hello", "web-ticker"), job_concurrency=1)
    first = rs.post_job({"project": "web-ticker", "params": {"ref": "queued-test"}},
                        asynchronous=True)
    assert first.status_code == 201, first.text
    second = rs.post_job({"project": "hello", "params": {"who": "second"}}, asynchronous=True)
    build_id = second.json()["id"]

    page.goto(f"{rs.url}/job/hello/{build_id}")
    expect(page.locator("#state .status")).to_have_text("queued")
    expect(page.locator("#log-waiting")).to_be_visible()

    expect(page.locator("#log")).to_contain_text("hello from the build", timeout=BUILD_TIMEOUT)
    expect(page.locator("#log")).to_contain_text("param who=second")
    expect(page.locator("#log-waiting")).to_be_hidden()
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    expect(page.locator("#artifacts")).to_contain_text("out.txt")
    expect(page.locator(".timings")).to_contain_text(re.compile(r"queued\s+[1-9]"))


def test_dashboard_updates_in_place(start_server, page):
    rs = start_server(projects=("hello",))
    page.goto(f"{rs.url}/")
    expect(page.locator("#recent")).to_contain_text("No builds yet")
    page.evaluate("window.__sameDocument = true")

    info = rs.build("hello", params={"who": "dashboard"})
    row = page.locator("#recent tr.build-row", has=page.locator(f"a[href$='{info['ID']}']"))
    expect(row.locator(".status")).to_have_text("succeeded", timeout=30_000)
    expect(row).to_contain_text("who=dashboard")
    expect(page.locator("#counts")).to_contain_text("1 succeeded")
    assert page.evaluate("window.__sameDocument") is True


def test_with_tokens_the_browser_logs_in_and_still_follows_the_log(start_server, page):
    """With tokens configured, a browser logs in once (a cookie), and the live log's EventSource
    and the page's own refresh carry that cookie."""
    viewer, ci = "read-token-0123456789abcdef", "build-token-0123456789abcdef"
    rs = start_server(projects=("web-evil",),
                      tokens=[{"name": "viewer", "token": viewer, "role": "read"},
                              {"name": "ci", "token": ci, "role": "build"}])
    page.goto(f"{rs.url}/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.locator("input[name=token]").fill(viewer)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.get_by_role("link", name="Log out")).to_be_visible()

    r = rs.post_job({"project": "web-evil"}, asynchronous=True,
                    headers={"Authorization": f"Bearer {ci}"})
    assert r.status_code == 201, r.text
    page.goto(f"{rs.url}/job/web-evil/{r.json()['id']}")
    expect(page.locator("#build")).to_have_attribute("data-live", "true")
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    expect(page.locator("#log")).to_contain_text("after the pause")
    expect(page.locator("#artifacts")).to_contain_text("underlined.txt")


def test_cancel_a_running_build_from_its_page(start_server, page):
    rs = start_server(projects=("web-ticker",))
    build_id = rs.post_job({"project": "web-ticker", "params": {"cancel": "me"}},
                           asynchronous=True).json()["id"]
    page.goto(f"{rs.url}/job/web-ticker/{build_id}")
    expect(page.locator("#log")).to_contain_text("tick 1", timeout=BUILD_TIMEOUT)
    page.evaluate("window.__sameDocument = true")
    page.locator("#cancel").click()
    expect(page.locator("#state .status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#cancel")).to_have_count(0)  # the finished page has no button
    assert page.evaluate("window.__sameDocument") is True  # no reload
    view = requests.get(f"{rs.url}/job/web-ticker/{build_id}",
                        headers={"Accept": "application/json"}, timeout=10).json()
    assert view["Status"] == "cancelled"
