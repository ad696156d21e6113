"""The dashboard in a real headless Chromium: loads cleanly and shows the numbers of a known load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from bus.transport.base import MessageState
from tests.e2e.test_delivery import MAPPING, ORDER, flows

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
async def browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_dashboard_shows_known_load(make_bus, sink, browser, tmp_path):
    """Four delivered and one dead message appear in the flow and connector tables, no console errors."""
    state, url = sink
    state.fail_next(1, status=400, path="/orders")
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        ids = []
        for _ in range(5):
            ids += (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
        finals = [await bus.wait_state(mid) for mid in ids]
        assert finals.count(MessageState.DELIVERED) == 4

        page = await browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(bus.url + "/dashboard")
        row = page.locator('#flows tr[data-flow="relay"] td')
        await row.first.wait_for()
        cells = await row.all_inner_texts()
        conn = await page.locator('#connectors tr[data-connector="sink"] td').all_inner_texts()
        failure = await page.locator("#failures tbody tr").first.inner_text()
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)

    assert problems == []
    # flow, messages, success, retried, filtered, msg/s, p50, p95, p99, backlog, dead letters
    assert cells[0] == "relay" and cells[1] == "5" and cells[2] == "80.0%" and cells[10] == "1"
    assert conn[0] == "sink" and conn[1] == "5" and conn[3] == "1"
    assert "400" in failure
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
