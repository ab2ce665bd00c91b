"""Headless Chromium for the browser tests: one place for the check, the launch and the offline page.

Drives Debian's /usr/bin/chromium through Playwright (no browser download). Playwright is imported only
when a browser is launched, so a module that skips for want of it still imports this one."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def missing_browser() -> str | None:
    """Why these tests cannot run here (what to install), or None when they can."""
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (requirements-dev.txt)"
    return None


def skip_without_browser() -> None:
    """Skip the calling test module, at its top level, where Chromium or Playwright is missing."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason, allow_module_level=True)


@contextmanager
def launch() -> Iterator[Browser]:
    """A headless Chromium, closed on the way out. Playwright's sync API runs one driver per thread at a time,
    so a module shares one (a module-scoped fixture) and opens its pages in it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def watch_problems(page: Page, problems: list[str]) -> list[str]:
    """Append every console error or warning and every uncaught page error of `page` to `problems`: a page
    that works must leave it empty."""
    page.on("console", lambda message: problems.append(message.text)
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


@dataclass
class OfflinePage:
    """A page opened from a file with the network cut off: `requests` lists every URL it asked for (its own
    included, first), `problems` its console errors and warnings and page errors."""

    page: Page
    url: str
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def fields(self) -> dict:
        """page, url, requests and problems by name, for a fixture's dict; the lists are these ones, so a
        request or problem that comes later shows there too."""
        return {"page": self.page, "url": self.url, "requests": self.requests, "problems": self.problems}


def open_offline(browser: Browser, path: Path, viewport: dict | None = None) -> OfflinePage:
    """`path` opened in a new page of `browser`, every request but the file's own aborted (and recorded), so a
    page that needed the network fails here as it would on an offline machine."""
    url = path.as_uri()
    page = browser.new_page(viewport=viewport)  # None: Playwright's default, 1280x720
    opened = OfflinePage(page=page, url=url)
    page.on("request", lambda request: opened.requests.append(request.url))
    watch_problems(page, opened.problems)
    page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
    page.goto(url)
    return opened


@contextmanager
def offline_page(path: Path, html: str, ready: str | None = None,
                 viewport: dict | None = None) -> Iterator[OfflinePage]:
    """`html` written to `path` and open offline in a Chromium of its own, once `ready` (a selector) is on the
    page: for a module fixture with one page to test."""
    path.write_text(html, encoding="utf-8")
    with launch() as browser:
        opened = open_offline(browser, path, viewport)
        if ready:
            opened.page.wait_for_selector(ready)
        yield opened
