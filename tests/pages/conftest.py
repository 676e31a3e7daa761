"""Browser fixtures: one ``dispatcher serve`` per module and one Chromium per module.

Chromium is Debian's (``/usr/bin/chromium``, or ``DISPATCHER_TEST_CHROMIUM``): missing, the
browser tests skip on a developer's machine and fail in CI (``CI=true``), like every server
a test needs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from live import CHROMIUM, LiveServer, launch_chromium, start_server  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from support import require_server  # noqa: E402

# expect() waits 5 s by default; a shared 2-core machine under load needs longer (a passing
# check returns as soon as it holds).
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("pages-server"))
    yield live
    live.stop()


@pytest.fixture(scope="module")  # not longer: Playwright's sync API must be gone before async tests run
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        require_server("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    """A desktop page whose every request is recorded in ``page.requested`` (for the offline
    check: nothing may come from anywhere but the server)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.requested = []
    tab.on("request", lambda request: tab.requested.append(request.url))
    yield tab
    context.close()
