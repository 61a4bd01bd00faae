"""Builds started from the web view, and the log panel that follows them: the project page's form,
Rebuild and Retry, the elapsed time and queue position, colours, stderr marks, the folded image
build, timestamps on demand, and "follow" that lets go when the reader scrolls up."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

BUILD_TIMEOUT = 90_000  # ms: an image build plus a container of a few seconds


def test_start_a_build_from_the_project_page_and_follow_it(start_server, page, doc_shots):
    rs = start_server(projects=("web-colours",))
    page.goto(f"{rs.url}/project/web-colours")
    form = page.locator("#build-form")
    expect(form).to_be_visible()  # open by itself: the project has no builds yet
    form.locator("textarea[name=params]").fill("ticks=4\nref=main")
    form.locator("input[name=group]").fill("nightly")
    form.locator("#build-submit").click()

    expect(page).to_have_url(re.compile(r"/job/web-colours/[0-9a-f]{64}$"))
    build_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#build")).to_have_attribute("data-live", "true")
    expect(page.locator("#log-follow")).to_be_checked()

    # the image build comes first, in its own section, folded once the build's output starts
    image = page.locator("#log-image")
    expect(image).to_contain_text("building image", timeout=BUILD_TIMEOUT)
    log = page.locator("#log-lines")
    expect(log).to_contain_text("tick 1", timeout=BUILD_TIMEOUT)
    expect(image).not_to_have_attribute("open", "")
    assert "tick 1" not in image.inner_text()

    # the elapsed time ticks while it runs
    elapsed = page.locator("#elapsed")
    first = elapsed.inner_text()
    expect(elapsed).not_to_have_text(first, timeout=5_000)

    # colours as CSS classes, carried over a line end; markup stays text; stderr is marked
    green = log.locator(".ln", has_text="coloured green")
    expect(green.locator("span.ansi32")).to_have_text("coloured green")
    expect(green).to_contain_text("and plain <b>not bold</b>")
    expect(log.locator(".ln", has_text="and is still red").locator("span.ansi31")).to_have_count(1)
    expect(log.locator(".ln.ln-e")).to_have_text(["a line on stderr\n"])
    assert "\x1b" not in log.inner_text()
    page.screenshot(path=doc_shots / "build-live.png")

    # timestamps on demand
    page.locator("#log-times").check()
    stamp = log.locator(".ln", has_text="tick 1").get_attribute("data-ts")
    assert stamp and re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", stamp), stamp

    # scrolling up stops following; the toggle brings the end back into view
    page.locator("#log").evaluate("el => { el.style.maxHeight = '4rem'; el.scrollTop = 0; }")
    expect(page.locator("#log-follow")).not_to_be_checked()
    page.locator("#log-follow").check()
    assert page.locator("#log").evaluate(
        "el => el.scrollHeight - el.scrollTop - el.clientHeight < 48")

    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    expect(log).to_contain_text("web-colours finished")
    view = requests.get(f"{rs.url}/job/web-colours/{build_id}",
                        headers={"Accept": "application/json"}, timeout=10).json()
    assert view["BuildInfo"]["Params"] == {"ticks": "4", "ref": "main"}
    assert view["BuildInfo"]["Group"] == "nightly"

    # the finished page renders the same lines from the server (colours, marks, the fold)
    page.reload()
    expect(page.locator("#log-image")).not_to_have_attribute("open", "")
    expect(page.locator("#log-lines .ln.ln-e")).to_have_text(["a line on stderr\n"])
    expect(page.locator("#log-lines span.ansi32")).to_have_text("coloured green")
    full = requests.get(f"{rs.url}/job/web-colours/{build_id}/out.log", timeout=10).text
    shown = [s.removesuffix("\n") for s in page.locator("#log .ln").all_text_contents()]
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in full.splitlines()]
    assert shown == plain


def test_rebuild_and_retry_from_the_build_page(start_server, page):
    rs = start_server(projects=("web-colours",))
    ok = rs.build("web-colours", params={"ticks": "0"})
    assert ok["Status"] == "succeeded"
    page.goto(f"{rs.url}/job/web-colours/{ok['ID']}")
    expect(page.locator("#retry")).to_have_count(0)
    with page.expect_navigation():  # the same build again: its page follows the new run
        page.locator("#rebuild").click()
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)
    view = requests.get(f"{rs.url}/job/web-colours/{ok['ID']}",
                        headers={"Accept": "application/json"}, timeout=10).json()
    assert view["BuildInfo"]["StartedAt"] != ok["StartedAt"]  # it ran again

    failed = rs.build("web-colours", params={"ticks": "0", "fail": "yes"})
    assert failed["Status"] == "failed"
    page.goto(f"{rs.url}/job/web-colours/{failed['ID']}")
    expect(page.locator("#rebuild")).to_have_count(0)
    with page.expect_navigation():
        page.locator("#retry").click()
    expect(page.locator("#log-lines")).to_contain_text("failing on purpose", timeout=BUILD_TIMEOUT)
    expect(page.locator("#state .status")).to_have_text("failed", timeout=BUILD_TIMEOUT)
    again = requests.get(f"{rs.url}/job/web-colours/{failed['ID']}",
                         headers={"Accept": "application/json"}, timeout=10).json()
    assert again["BuildInfo"]["StartedAt"] != failed["StartedAt"]


def test_the_form_explains_what_it_refuses(start_server, page):
    rs = start_server(projects=("web-colours",))
    page.goto(f"{rs.url}/project/web-colours")
    form = page.locator("#build-form")
    form.locator("textarea[name=params]").fill("no equals sign here")
    form.locator("#build-submit").click()
    expect(page.locator("#build-problem")).to_contain_text("line 1 is not key=value")
    form.locator("textarea[name=params]").fill("bad/key=1")
    form.locator("#build-submit").click()
    expect(page.locator("#build-problem")).to_contain_text("bad/key")  # the server's 400
    expect(page).to_have_url(re.compile(r"/project/web-colours$"))


def test_a_queued_build_shows_its_place(start_server, page):
    rs = start_server(projects=("web-colours",), job_concurrency=1)
    first = rs.post_job({"project": "web-colours", "params": {"ticks": "6"}}, asynchronous=True)
    second = rs.post_job({"project": "web-colours", "params": {"ticks": "5", "n": "2"}},
                         asynchronous=True)
    third = rs.post_job({"project": "web-colours", "params": {"ticks": "0", "n": "3"}},
                        asynchronous=True)
    assert {r.status_code for r in (first, second, third)} == {201}
    page.goto(f"{rs.url}/job/web-colours/{third.json()['id']}")
    expect(page.locator("#queue-position")).to_contain_text("number 2 of 2 in the queue")
    # the first one ends, the second starts: the third is next, without a reload
    expect(page.locator("#queue-position")).to_contain_text("number 1 of 1", timeout=BUILD_TIMEOUT)
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=BUILD_TIMEOUT)


def test_with_tokens_building_needs_the_build_role(start_server, page):
    viewer, ci = "read-token-0123456789abcdef", "build-token-0123456789abcdef"
    rs = start_server(projects=("web-colours",),
                      tokens=[{"name": "viewer", "token": viewer, "role": "read"},
                              {"name": "ci", "token": ci, "role": "build"}])
    for token, allowed in ((viewer, False), (ci, True)):
        page.goto(f"{rs.url}/login?next=/project/web-colours")
        page.locator("input[name=token]").fill(token)
        page.get_by_role("button", name="Log in").click()
        page.locator("#build-form textarea[name=params]").fill("ticks=0")
        page.locator("#build-submit").click()
        if allowed:
            expect(page).to_have_url(re.compile(r"/job/web-colours/[0-9a-f]{64}$"))
            expect(page.locator("#state .status")).to_have_text("succeeded",
                                                                 timeout=BUILD_TIMEOUT)
        else:
            expect(page.locator("#build-problem")).to_contain_text("needs 'build'")
    # a page of another origin cannot make the browser build (the cookie is SameSite=Strict, and
    # the server checks Origin like for cancel)
    r = requests.post(f"{rs.url}/jobs?async", json={"project": "web-colours"},
                      cookies={"mistryd_token": ci},
                      headers={"Origin": "http://evil.example"}, timeout=10)
    assert r.status_code == 403, r.text
