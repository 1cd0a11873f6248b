"""Helpers of the browser tests: pages in a real Chromium, logging in, screenshots."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import UNIT

CHROMIUM = "/usr/bin/chromium"


FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


WAIT_MS = 5_000 * UNIT


SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class Pages:
    """Opens pages, each in its own browser context (its own session storage: one user
    per context), and records everything they complain about."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.problems: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    async def new(self) -> Page:
        context = await self.browser.new_context(viewport={"width": 1440, "height": 760})
        self.contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.on("console", self._console)
        return page

    def expect_console_error(self, pattern: str) -> None:
        """A console error the browser itself logs for a fault the test causes."""
        self.expected.append(re.compile(pattern))

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        if any(p.search(message.text) for p in self.expected):
            return
        self.problems.append(f"console error: {message.text}")

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    try:
        yield opened
    finally:
        await opened.close()
    assert opened.problems == [], f"the page complained: {opened.problems}"


@pytest.fixture
async def page(pages: Pages) -> Page:
    return await pages.new()


async def log_in(page: Page, base: str, user: str = "nw-okafor", path: str = "/") -> None:
    """Open `path`, pick a demo user on the login screen, land back on `path`'s view."""
    await page.goto(base + path)
    await page.locator(f'#users button[data-user="{user}"]').click()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.mouse.move(0, 0)  # no hover: patients stay masked on the picture
    await page.screenshot(path=str(SCREENSHOTS / name), animations="disabled")
