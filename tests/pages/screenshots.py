"""The README's screenshots of the people's pages: ``python tests/pages/screenshots.py``.

Starts a real ``dispatcher serve`` in a temporary folder, gives a user a few notifications,
and saves each page as a desktop (1280 px) and a phone (390 px) screenshot to
``docs/screenshots/``, with Debian's Chromium (as the browser tests do).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

from live import SECRET, LiveServer, add_user, launch_chromium, send, start_server, user_token, wait_until  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from dispatcher.unsubscribe import UnsubscribeLinks  # noqa: E402

OUT = HERE.parents[1] / "docs" / "screenshots"
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


def populate(server: LiveServer) -> dict[str, str]:
    add_user(server, "mina")
    add_user(server, "jisoo", locale="ko-KR")
    ids = [f"app#00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]
    for notification_id, app, state in zip(ids, ("Maps", "Camera", "Podcasts"),
                                           ("completed", "installing", "failed"), strict=True):
        send(server, {"id": notification_id, "recipients": ["mina"], "template": "app-install",
                      "data": {"app_name": app}, "state": state})
    with server.api() as api:
        wait_until(lambda: len(api.get("/v1/users/mina/notifications").json()["items"]) == 3,
                 timeout=60, what="three feed entries")
        api.post(f"/v1/users/mina/notifications/{ids[0].replace('#', '%23')}/read")
        api.put("/v1/users/mina/preferences", json={"categories": {"marketing": {"sms": False, "push": False}}})
        link = api.post("/v1/users/mina/preference-link").json()["url"]
    return {
        "preferences": link,
        "inbox": f"{server.url}/inbox#token={user_token('mina')}",
        "unsubscribe-ko": UnsubscribeLinks(server.url, SECRET).url("jisoo", "marketing"),
        "error": f"{server.url}/p/expired-or-altered",
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(Path(folder))
        try:
            pages = populate(server)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for size, viewport in SIZES.items():
                    context = browser.new_context(viewport=viewport, is_mobile=size == "phone",
                                                  device_scale_factor=1, locale="en-US")
                    page = context.new_page()
                    for name, url in pages.items():
                        page.goto(url)
                        if name == "inbox":
                            page.locator("dispatcher-inbox li.entry").nth(2).wait_for()
                            page.locator("dispatcher-inbox .live").filter(has_text="Live").wait_for()
                        path = OUT / f"{name}-{size}.png"
                        page.screenshot(path=str(path), full_page=True)
                        print(path.relative_to(HERE.parents[1]))
                    context.close()
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
