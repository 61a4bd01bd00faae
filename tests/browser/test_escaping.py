"""Whatever a build prints or is given shows as text: markup never runs, live or rendered."""

from __future__ import annotations

from playwright.sync_api import expect

HOSTILE_PARAM = "<img src=x onerror=alert(4)>"


def test_markup_from_a_build_is_text(start_server, page):
    rs = start_server(projects=("web-evil",))
    r = rs.post_job({"project": "web-evil", "params": {"note": HOSTILE_PARAM}}, asynchronous=True)
    build_id = r.json()["id"]
    page.goto(f"{rs.url}/job/web-evil/{build_id}")

    log = page.locator("#log")
    expect(page.locator("#state .status")).to_have_text("succeeded", timeout=90_000)
    for _ in range(2):  # first as streamed live (textContent), then as rendered by the server
        expect(log).to_contain_text("<script>alert(1)</script>")
        expect(log).to_contain_text("<img src=x onerror=alert(2)>")
        expect(log).to_contain_text("after the pause: <b>not bold</b> & <script>alert(3)</script>")
        expect(log).to_contain_text(f"param note={HOSTILE_PARAM}")
        assert page.locator("#log script, #log img, #log b, main img").count() == 0
        expect(page.locator(".params-table")).to_contain_text(HOSTILE_PARAM)
        expect(page.locator("#artifacts")).to_contain_text("<u>underlined.txt")
        assert page.locator("#artifacts u").count() == 0
        page.reload()

    row = page.locator("#artifacts tr", has_text="underlined.txt")
    assert row.locator("a.download").get_attribute("href") == \
        f"/artifacts/web-evil/{build_id}/%3Cu%3Eunderlined.txt"
    assert row.locator("a.view").get_attribute("href") == \
        f"/job/web-evil/{build_id}/view/%3Cu%3Eunderlined.txt"

    page.goto(f"{rs.url}/")
    expect(page.locator("tr.build-row")).to_contain_text(HOSTILE_PARAM)
    assert page.locator("main img").count() == 0
