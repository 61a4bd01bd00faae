"""Browser fixtures: Debian's Chromium driven by Playwright, a proxy that can drop connections,
and an index seeded with thousands of builds.

`playwright install` cannot download its own browser here; scripts/setup.sh installs Debian's
`chromium`, which Playwright drives through `executable_path`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TcpProxy

from mistryd.store import Status, Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (run scripts/setup.sh)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test. A JavaScript error or an alert() fails the test."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))

    def on_dialog(dialog) -> None:
        problems.append(f"a dialog opened: {dialog.type} {dialog.message!r}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    yield pg
    context.close()
    assert not problems, problems


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


DOC_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def doc_shots() -> Path:
    """docs/screenshots/: the few pictures the README and docs/web.md show, written by the run
    (the viewport only, not the whole page, to keep them small)."""
    DOC_SHOTS.mkdir(parents=True, exist_ok=True)
    return DOC_SHOTS


class DropProxy(TcpProxy):
    """A proxy in front of the server that records what the browser sends, so a test can cut
    every open connection and see what the browser asks for afterwards."""

    def __init__(self, target_port: int):
        self.requests: list[bytes] = []  # client-to-server data, one entry per read
        super().__init__(target_port)

    def forward(self, data: bytes, to_client: bool, sent: int) -> tuple[bytes, bool]:
        if not to_client:
            with self._lock:
                self.requests.append(data)
        return data, False

    def requests_for(self, path_prefix: str) -> list[str]:
        """Request heads sent for paths starting with `path_prefix`."""
        with self._lock:
            chunks = list(self.requests)
        heads = []
        for chunk in chunks:
            text = chunk.decode("latin-1")
            for part in text.split("\r\n\r\n"):
                if part.startswith(f"GET {path_prefix}"):
                    heads.append(part)
        return heads


@pytest.fixture
def drop_proxy() -> Iterator:
    proxies: list[DropProxy] = []

    def make(target_url: str) -> DropProxy:
        proxy = DropProxy(int(target_url.rsplit(":", 1)[1]))
        proxies.append(proxy)
        return proxy

    yield make
    for p in proxies:
        p.close()


def seeded_id(i: int) -> str:
    return hashlib.sha256(f"seeded-build-{i}".encode()).hexdigest()


def seeded_status(i: int) -> Status:
    return Status.FAILED if i % 7 == 0 else Status.SUCCEEDED


def seed_builds(store: Store, n: int, projects: tuple[str, ...] = ("hello", "alpha"),
                groups: int = 5, start: float = 1_700_000_000.0) -> None:
    """n finished builds in the index only (no folders), in one transaction: build i is of
    projects[i % len(projects)], group g<i % groups>, and newer than build i-1."""
    conn = store._conn()
    conn.execute("BEGIN")
    try:
        for i in range(n):
            project = projects[i % len(projects)]
            status = seeded_status(i)
            info = {"ID": seeded_id(i), "Project": project, "Group": f"g{i % groups}",
                    "Params": {"ref": f"v{i}", "note": "<b>seeded</b>"},
                    "ExitCode": 0 if status is Status.SUCCEEDED else 1,
                    "Status": status.value, "Timings": {"queued": 0.1, "image": 0.5, "run": 2.0},
                    "Duration": 2_600_000_000, "Incremental": i % 2 == 1}
            store.record_finished(project, seeded_id(i), status, info,
                                  reason="" if status is Status.SUCCEEDED else "exit code 1",
                                  now=start + i)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
