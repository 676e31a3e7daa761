"""The people's pages in a real Chromium against a real ``dispatcher serve``: what a person
sees and does, and what the service then does."""

from __future__ import annotations

import re
from typing import Any

from live import SECRET, LiveServer, add_user, send, serve_app_page, user_token, wait_until
from playwright.sync_api import expect
from support import channel_counts, new_id, path_id, sent_lines

from dispatcher.unsubscribe import UnsubscribeLinks

APP = "App installs and updates"
SETTLE_TIMEOUT = 60.0  # seconds for a notification's channels to settle on a loaded machine
LIVE_TIMEOUT = 60_000  # ms for a live update to reach the page on a loaded machine

#: Colour contrast of every visible text (shadow roots included), as WCAG 2 computes it:
#: 4.5:1, or 3:1 for large text (24 px, or 18.66 px bold). Disabled controls are exempt.
CONTRAST_PROBLEMS = """() => {
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const parse = (text) => {
    const parts = (text.match(/rgba?\\(([^)]+)\\)/) || [, ""])[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return parts.length < 3 ? null : {rgb: parts.slice(0, 3), alpha: parts.length > 3 ? parts[3] : 1};
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement || (e.getRootNode && e.getRootNode().host)) {
      const colour = parse(getComputedStyle(e).backgroundColor);
      if (colour && colour.alpha > 0.5) return colour.rgb;
    }
    return [255, 255, 255];
  };
  const problems = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot) walk(el.shadowRoot);
      if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
      const style = getComputedStyle(el);
      if (!el.getClientRects().length || style.visibility === "hidden" || el.closest(":disabled")) continue;
      const a = luminance(parse(style.color).rgb), b = luminance(background(el));
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
      if (ratio < (size >= 24 || (bold && size >= 18.66) ? 3 : 4.5))
        problems.push(`${el.tagName.toLowerCase()}.${el.className} ${ratio.toFixed(2)}:1 ` +
                      `"${el.textContent.trim().slice(0, 40)}"`);
    }
  };
  walk(document);
  return problems;
}"""


def preference_link(server: LiveServer, user_id: str) -> str:
    with server.api() as api:
        r = api.post(f"/v1/users/{user_id}/preference-link")
        assert r.status_code == 200, r.text
        return str(r.json()["url"])


def install(user_id: str, notification_id: str, state: str, version: int = 1) -> dict[str, Any]:
    return {"id": notification_id, "recipients": [user_id], "template": "app-install",
            "data": {"app_name": "Maps"}, "state": state, "version": version}


def settled_counts(server: LiveServer, notification_id: str) -> dict[str, dict[str, int]] | None:
    with server.api() as api:
        r = api.get(f"/v1/notifications/{path_id(notification_id)}")
    if r.status_code != 200:
        return None
    counts: dict[str, dict[str, int]] = r.json()["counts"]
    return counts if counts and all(c["pending"] == 0 for c in counts.values()) else None


def only_from(server: LiveServer, urls: list[str]) -> list[str]:
    """The requests that went anywhere but the server (a CDN, a font host): none allowed."""
    return [u for u in urls if not u.startswith((server.url, "data:", f"http://127.0.0.1:{server.app_port}/"))]


def test_sms_switched_off_in_the_centre_is_skipped_opted_out_and_the_rest_are_sent(
        page: Any, server: LiveServer) -> None:
    add_user(server, "alice")
    response = page.goto(preference_link(server, "alice"))
    assert response.status == 200
    assert page.evaluate("document.documentElement.lang") == "en"
    sms = page.get_by_role("switch", name=f"Text messages (SMS) for {APP}")
    expect(sms).to_be_checked()
    sms.click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(sms).not_to_be_checked()
    with server.api() as api:
        assert api.get("/v1/users/alice/preferences").json()["categories"] == {"app": {"sms": False}}

    notification_id = new_id()
    send(server, install("alice", notification_id, "installing"))
    counts = wait_until(lambda: settled_counts(server, notification_id), timeout=SETTLE_TIMEOUT,
                      what="every channel of the notification to settle")
    assert counts["sms"] == channel_counts(skipped=1)
    for channel in ("email", "push", "in_app"):
        assert counts[channel] == channel_counts(sent=1), channel
    with server.api() as api:
        rows = api.get(f"/v1/notifications/{path_id(notification_id)}/deliveries").json()["items"]
    assert {(r["channel"], r["status"], r["reason"]) for r in rows if r["channel"] == "sms"} == {
        ("sms", "skipped", "opted_out")}
    sent = {line["channel"] for line in sent_lines(server.sent_path) if line["notification_id"] == notification_id}
    assert sent == {"email", "push"}  # what the log providers sent: no SMS
    assert only_from(server, page.requested) == []


def test_the_inbox_shows_a_notification_and_its_update_live_and_reading_it_drops_the_badge(
        page: Any, server: LiveServer) -> None:
    add_user(server, "bob")
    token = user_token("bob")
    page.goto(f"{server.url}/inbox#token={token}")
    inbox = page.locator("dispatcher-inbox")
    expect(inbox.locator(".live")).to_have_text("Live")
    assert token not in page.url  # the fragment is gone from the address bar
    assert page.evaluate("document.documentElement.lang") == "en"
    badge = inbox.locator(".badge")
    expect(badge).to_have_text("0")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads

    notification_id = new_id()
    send(server, install("bob", notification_id, "installing"))
    entry = inbox.locator(f'li.entry[data-id="{notification_id}"]')
    expect(entry).to_have_attribute("data-state", "installing", timeout=LIVE_TIMEOUT)
    expect(entry.get_by_role("heading")).to_contain_text("Installing Maps")
    expect(badge).to_have_text("1")

    send(server, install("bob", notification_id, "completed", version=2))
    expect(entry).to_have_attribute("data-state", "completed", timeout=LIVE_TIMEOUT)
    expect(entry.get_by_role("heading")).to_contain_text("Maps installed")
    expect(inbox.locator("li.entry")).to_have_count(1)
    expect(badge).to_have_text("1")
    assert page.evaluate("window.sameDocument") is True

    entry.get_by_role("button", name="Mark “Maps installed” as read").click()
    expect(badge).to_have_text("0")
    expect(entry).not_to_have_class(re.compile(r"\bunread\b"))
    with server.api(token) as api:
        assert api.get("/v1/users/bob/notifications").json()["unread_count"] == 0
    assert [u for u in page.requested if token in u] == [], "the user token went into a URL"
    assert any("/notifications/stream?stream_token=" in u for u in page.requested)
    assert only_from(server, page.requested) == []


def test_the_inbox_lists_newest_first_and_marks_all_read(page: Any, server: LiveServer) -> None:
    add_user(server, "erin")
    first, second = new_id(), new_id()
    for notification_id in (first, second):
        send(server, install("erin", notification_id, "installing"))
        wait_until(lambda nid=notification_id: settled_counts(server, nid), timeout=SETTLE_TIMEOUT,
                 what="the notification to reach the feed")
    page.goto(f"{server.url}/inbox#token={user_token('erin')}")
    inbox = page.locator("dispatcher-inbox")
    expect(inbox.locator("li.entry")).to_have_count(2)
    assert inbox.locator("li.entry").evaluate_all("els => els.map(e => e.dataset.id)") == [second, first]
    expect(inbox.locator(".badge")).to_have_text("2")
    inbox.get_by_role("button", name="Mark all as read").click()
    expect(inbox.locator(".badge")).to_have_text("0")
    expect(inbox.locator("li.entry.unread")).to_have_count(0)
    expect(inbox.get_by_role("button", name="Mark all as read")).to_be_disabled()


def test_an_app_embeds_the_inbox_on_its_own_site(page: Any, server: LiveServer) -> None:
    add_user(server, "carol", locale="ko")
    token = user_token("carol")
    app_page = f"""<!doctype html><html lang="ko"><head><meta charset="utf-8"><title>My app</title>
        <script src="{server.url}/pages/inbox.js"></script></head>
        <body><h1>My app</h1><dispatcher-inbox></dispatcher-inbox>
        <script>document.querySelector("dispatcher-inbox").token = "{token}";</script></body></html>"""
    with serve_app_page(server.app_port, app_page) as app_url:
        page.goto(app_url)
        inbox = page.locator("dispatcher-inbox")
        expect(inbox.get_by_role("heading", name=re.compile("^알림"))).to_be_visible()
        expect(inbox.locator(".live")).to_have_text("실시간")
        notification_id = new_id()
        send(server, install("carol", notification_id, "installing"))
        expect(inbox.locator(f'li.entry[data-id="{notification_id}"]')).to_be_visible(timeout=LIVE_TIMEOUT)
        expect(inbox.locator(".badge")).to_have_text("1")
        assert only_from(server, page.requested) == []


def test_a_switch_works_from_the_keyboard(page: Any, server: LiveServer) -> None:
    add_user(server, "dave")
    page.goto(preference_link(server, "dave"))
    email = page.get_by_role("switch", name=f"Email for {APP}")
    for _ in range(30):
        page.keyboard.press("Tab")
        if email.evaluate("el => el === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached the first switch")
    assert email.evaluate("el => getComputedStyle(el).outlineStyle") != "none"  # focus is visible
    page.keyboard.press("Space")
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(email).not_to_be_checked()
    with server.api() as api:
        assert api.get("/v1/users/dave/preferences").json()["categories"] == {"app": {"email": False}}
    page.keyboard.press("Enter")
    expect(email).to_be_checked()
    with server.api() as api:
        wait_until(lambda: api.get("/v1/users/dave/preferences").json()["categories"] == {"app": {"email": True}},
                 timeout=30, what="the switch back on to be saved")


def test_a_critical_category_is_shown_always_on(page: Any, server: LiveServer) -> None:
    page.goto(preference_link(server, "frank"))
    security = page.get_by_role("group", name="Security alerts")
    expect(security.get_by_text("These concern your account's safety")).to_be_visible()
    for switch in security.get_by_role("switch").all():
        expect(switch).to_be_checked()
        expect(switch).to_be_disabled()


def test_a_tampered_link_gets_a_friendly_page_in_the_readers_language(browser: Any, server: LiveServer) -> None:
    context = browser.new_context(locale="ko-KR")
    try:
        tab = context.new_page()
        url = preference_link(server, "gina")
        tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
        response = tab.goto(tampered)
        assert response.status == 404 and response.headers["content-type"].startswith("text/html")
        expect(tab.get_by_role("heading", level=1)).to_have_text("이 링크는 사용할 수 없습니다")
        assert tab.evaluate("document.documentElement.lang") == "ko"
        response = tab.goto(f"{server.url}/v1/unsubscribe/not.a-link")
        assert response.status == 404
        expect(tab.get_by_role("heading", level=1)).to_have_text("이 링크는 사용할 수 없습니다")
    finally:
        context.close()


def test_every_page_fits_a_phone_and_passes_contrast(browser: Any, server: LiveServer) -> None:
    add_user(server, "hana")
    notification_id = new_id()
    send(server, install("hana", notification_id, "installing"))
    wait_until(lambda: settled_counts(server, notification_id), timeout=SETTLE_TIMEOUT, what="the notification")
    unsubscribe = _unsubscribe_url(server, "hana")
    pages = {"preferences": preference_link(server, "hana"),
             "inbox": f"{server.url}/inbox#token={user_token('hana')}",
             "unsubscribe": unsubscribe, "error": f"{server.url}/p/tampered"}
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        tab = context.new_page()
        for name, url in pages.items():
            tab.goto(url)
            if name == "inbox":
                expect(tab.locator("dispatcher-inbox li.entry")).to_have_count(1, timeout=LIVE_TIMEOUT)
            width = tab.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{name} scrolls sideways on a phone ({width} px)"
            assert tab.evaluate(CONTRAST_PROBLEMS) == [], name
            assert tab.evaluate("document.documentElement.lang") == "en", name
    finally:
        context.close()


def _unsubscribe_url(server: LiveServer, user_id: str) -> str:
    """The List-Unsubscribe link the server puts in the user's emails (same key, same URL)."""
    return UnsubscribeLinks(server.url, SECRET).url(user_id, "app")


def test_the_unsubscribe_page_asks_then_switches_that_categorys_email_off(page: Any, server: LiveServer) -> None:
    add_user(server, "ivan")
    response = page.goto(_unsubscribe_url(server, "ivan"))
    assert response.status == 200
    expect(page.get_by_text("Stop emails about App installs and updates?")).to_be_visible()
    with server.api() as api:
        assert api.get("/v1/users/ivan/preferences").json()["categories"] == {}  # GET changes nothing
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribed")
    with server.api() as api:
        assert api.get("/v1/users/ivan/preferences").json()["categories"] == {"app": {"email": False}}
    page.get_by_role("link", name="Manage all your notification settings").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Notification settings")
    expect(page.get_by_role("switch", name=f"Email for {APP}")).not_to_be_checked()


def test_the_inbox_opens_the_users_preference_centre(page: Any, server: LiveServer) -> None:
    page.goto(f"{server.url}/inbox#token={user_token('judy')}")
    page.locator("dispatcher-inbox").get_by_role("button", name="Notification settings").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Notification settings")
    assert "/p/" in page.url
