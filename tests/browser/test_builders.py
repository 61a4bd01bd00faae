"""The dashboard's table of builders (docs/web.md), in a real browser over the real `mistryd`
command with two builder processes: each listed with its state, what it runs of its capacity and
when it was last heard from; the table follows a build in place (busy, then idle again), the
running build names its builder, and a phone shows it all without cutting anything off."""

from __future__ import annotations

import re
import signal

import pytest
import requests
from playwright.sync_api import expect
from support import children_of, make_setup, wait_for

pytestmark = pytest.mark.docker

PHONE = {"width": 390, "height": 844}


def test_the_dashboard_lists_the_builders_and_follows_them(tmp_path, docker_engine, page,
                                                          screenshots):
    setup = make_setup(tmp_path, ("web-ticker",), job_concurrency=1, builder_processes=2)
    proc = setup.start()
    try:
        def names() -> set[str]:
            return {f"builder-{pid}" for pid in children_of(proc.pid, "mistryd-builder")}

        def announced() -> set[str]:
            stats = requests.get(f"{setup.url}/api/queue/stats", timeout=10).json()
            return {b["name"] for b in stats["builders"]}

        wait_for(lambda: len(names()) == 2 and announced() == names(), timeout=60)
        page.goto(f"{setup.url}/")
        rows = page.locator("#builders tr.builder-row")
        expect(rows).to_have_count(2)
        for name in names():
            row = rows.filter(has_text=name)
            expect(row.locator(".status")).to_have_text("idle")
            expect(row.locator("td[data-label=running]")).to_have_text("0 / 1")
            expect(row.locator("td[data-label=labels]")).to_have_text("—")
            expect(row.locator("time")).to_have_text(re.compile(r"just now|\d+(\.\d)? s ago"))
        page.evaluate("window.__sameDocument = true")

        build_id = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                                 timeout=10).json()["id"]
        # within a refresh: one builder busy with it, and the running build names it
        busy = rows.filter(has=page.locator(".status", has_text="busy"))
        expect(busy).to_have_count(1, timeout=20_000)
        expect(busy.locator("td[data-label=running]")).to_have_text("1 / 1")
        holder = busy.locator("code").inner_text()
        assert holder in names()
        flight = page.locator("#in-flight tr.build-row", has=page.locator(f"a[href$='{build_id}']"))
        expect(flight.locator("td[data-label=builder]")).to_have_text(holder)
        page.screenshot(path=screenshots / "dashboard-builders.png", full_page=True)

        # the build ends: both idle again, still the same document (updated in place)
        expect(rows.filter(has=page.locator(".status", has_text="idle"))).to_have_count(
            2, timeout=60_000)
        assert page.evaluate("window.__sameDocument") is True

        # a phone: the builders are cards that name their fields, nothing cut off
        page.set_viewport_size(PHONE)
        page.goto(f"{setup.url}/")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        assert rows.first.evaluate("el => getComputedStyle(el).display") == "block"
        assert rows.first.locator("td[data-label=running]").evaluate(
            "el => getComputedStyle(el, '::before').content") == '"running"'
        page.locator("#builders").screenshot(path=screenshots / "phone-builders.png")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
