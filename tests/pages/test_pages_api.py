"""The pages' server side, in process: who a link or a stream token lets in, what the
preference centre saves, what a bad link gets. (The browser tests drive the same pages in
Chromium against a real server: test_pages_browser.py.)"""

from __future__ import annotations

import html
import json
import re
import time
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest
from support import USER_SECRET, new_id, user_token

from dispatcher.api import create_app
from dispatcher.api.auth import ScopedTokens
from dispatcher.config import Settings
from dispatcher.errors import ConfigurationError
from dispatcher.pages.catalog import Categories, negotiate
from dispatcher.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def anonymous(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A browser's view: no credentials but what the URL carries."""
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as c:
        yield c


def as_user(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(user_id)}"}


async def preference_token(client: httpx.AsyncClient, user_id: str = "u1") -> str:
    r = await client.post(f"/v1/users/{user_id}/preference-link")
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith("http://dispatcher/p/")
    return str(url.rsplit("/", 1)[1])


async def test_a_preference_link_expires_after_the_default_lifetime_or_less(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/users/u1/preference-link")
    expires = r.json()["expires_at"]
    assert abs(_epoch(expires) - (time.time() + 7 * 86400)) < 60
    shorter = await client.post("/v1/users/u1/preference-link", json={"ttl": 3600})
    assert abs(_epoch(shorter.json()["expires_at"]) - (time.time() + 3600)) < 60
    longer = await client.post("/v1/users/u1/preference-link", json={"ttl": 365 * 86400})
    assert abs(_epoch(longer.json()["expires_at"]) - (time.time() + 7 * 86400)) < 60  # capped
    bad = await client.post("/v1/users/u1/preference-link", json={"ttl": "soon"})
    assert bad.status_code == 422 and "ttl" in bad.json()["error"]["message"]


async def test_a_user_may_mint_their_own_link_but_not_another_users(anonymous: httpx.AsyncClient) -> None:
    own = await anonymous.post("/v1/users/u1/preference-link", headers=as_user("u1"))
    assert own.status_code == 200
    other = await anonymous.post("/v1/users/u2/preference-link", headers=as_user("u1"))
    assert other.status_code == 403
    nobody = await anonymous.post("/v1/users/u1/preference-link")
    assert nobody.status_code == 401


async def test_a_preference_link_is_no_api_credential(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    token = await preference_token(client)
    bearer = {"Authorization": f"Bearer {token}"}
    send = {"id": new_id(), "recipients": ["u1"], "template": "app-install", "data": {"app_name": "Maps"}}
    for method, path, body in (("POST", "/v1/notifications", send),
                               ("GET", "/v1/users/u1/preferences", None),
                               ("PUT", "/v1/users/u1/preferences", {"channels": {"sms": False}}),
                               ("GET", "/v1/users/u1/notifications", None),
                               ("POST", "/v1/users/u1/notifications/stream-token", None),
                               ("POST", "/v1/users/u1/preference-link", None)):
        r = await anonymous.request(method, path, headers=bearer, json=body)
        assert r.status_code == 401, (method, path, r.text)
    r = await anonymous.get("/v1/users/u1/notifications/stream", params={"stream_token": token})
    assert r.status_code == 401
    prefs = await client.get("/v1/users/u1/preferences")
    assert prefs.json() == {"channels": {}, "categories": {}}


async def test_the_centre_saves_a_switch_with_the_apis_semantics(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    await client.put("/v1/users/u1/preferences", json={"channels": {"push": False}})
    token = await preference_token(client)
    r = await anonymous.post(f"/p/{token}/switch", json={"category": "app", "channel": "sms", "enabled": False})
    assert r.status_code == 200 and r.json() == {"category": "app", "channel": "sms", "enabled": False}
    prefs = (await client.get("/v1/users/u1/preferences")).json()
    assert prefs == {"channels": {"push": False}, "categories": {"app": {"sms": False}}}
    page = await anonymous.get(f"/p/{token}")
    assert _switch(page.text, "app/sms") is False and _switch(page.text, "app/push") is False
    assert _switch(page.text, "app/email") is True


async def test_a_critical_category_is_always_on_and_cannot_be_switched_off(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    token = await preference_token(client)
    page = await anonymous.get(f"/p/{token}")
    assert re.search(r'value="security/email"[^>]*checked[^>]*disabled', page.text)
    r = await anonymous.post(f"/p/{token}/switch", json={"category": "security", "channel": "email",
                                                          "enabled": False})
    assert r.status_code == 409 and "always on" in r.json()["error"]["message"]
    form = await anonymous.post(f"/p/{token}", data={"shown": ["security/email"], "on": []})
    assert form.status_code == 303
    assert (await client.get("/v1/users/u1/preferences")).json()["categories"] == {}


async def test_the_form_without_script_writes_only_the_switches_changed(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    token = await preference_token(client)
    shown = [f"{c}/{ch}" for c in ("app", "marketing") for ch in ("email", "sms", "push", "in_app")]
    on = [s for s in shown if s != "marketing/email"]
    r = await anonymous.post(f"/p/{token}", data={"shown": shown, "on": on})
    assert r.status_code == 303 and r.headers["location"] == f"/p/{token}?saved=true"
    prefs = (await client.get("/v1/users/u1/preferences")).json()
    assert prefs["categories"] == {"marketing": {"email": False}}
    page = await anonymous.get(r.headers["location"])
    assert "Saved." in page.text and _switch(page.text, "marketing/email") is False


async def test_a_tampered_or_expired_link_gets_a_friendly_page(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    token = await preference_token(client)
    head, _, signature = token.rpartition(".")
    tampered = f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    for path in (f"/p/{tampered}", "/p/nonsense"):
        r = await anonymous.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "This link doesn't work" in html.unescape(r.text) and "<html lang=\"en\">" in r.text
    old, _ = ScopedTokens(USER_SECRET, "preferences", 7 * 86400).mint("u1", 60, now=time.time() - 3600)
    r = await anonymous.get(f"/p/{old}", headers={"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.5"})
    assert r.status_code == 410 and "링크가 만료되었습니다" in r.text and '<html lang="ko">' in r.text
    switch = await anonymous.post(f"/p/{old}/switch", json={"category": "app", "channel": "sms", "enabled": False})
    assert switch.status_code == 410


async def test_the_page_speaks_the_users_language(client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    await client.put("/v1/users/u1", json={"locale": "ko-KR"})
    token = await preference_token(client)
    page = await anonymous.get(f"/p/{token}")
    assert '<html lang="ko">' in page.text and "앱 설치 및 업데이트" in page.text and "문자 메시지(SMS)" in page.text
    english = await anonymous.get(f"/p/{token}", params={"lang": "en"})
    assert '<html lang="en">' in english.text and "App installs and updates" in english.text


async def test_a_stream_token_opens_its_own_users_stream_only(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    minted = await anonymous.post("/v1/users/u1/notifications/stream-token", headers=as_user("u1"))
    assert minted.status_code == 200
    token = minted.json()["token"]
    assert abs(_epoch(minted.json()["expires_at"]) - (time.time() + 60)) < 10
    foreign = await anonymous.get("/v1/users/u2/notifications/stream", params={"stream_token": token})
    assert foreign.status_code == 403
    assert (await anonymous.post("/v1/users/u2/notifications/stream-token", headers=as_user("u1"))).status_code == 403
    # Not a credential anywhere else, and a user token is no stream token.
    assert (await anonymous.get("/v1/users/u1/notifications",
                                headers={"Authorization": f"Bearer {token}"})).status_code == 401
    r = await anonymous.get("/v1/users/u1/notifications/stream", params={"stream_token": user_token("u1")})
    assert r.status_code == 401


def test_an_expired_stream_token_is_refused() -> None:
    tokens = ScopedTokens(USER_SECRET, "stream", 60)
    old, _ = tokens.mint("u1", now=time.time() - 120)
    with pytest.raises(Exception, match="expired"):
        tokens.verify(old)
    assert tokens.verify(tokens.mint("u1")[0]) == "u1"


async def test_a_bad_unsubscribe_link_is_a_page_in_the_browsers_language(runtime: Runtime) -> None:
    rt = await Runtime.open(runtime.settings.model_copy(update={"public_url": "http://dispatcher"}))
    try:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as c:
            r = await c.get("/v1/unsubscribe/abc.def", headers={"Accept-Language": "ko"})
            assert r.status_code == 404 and '<html lang="ko">' in r.text and "사용할 수 없습니다" in r.text
            assert rt.links is not None
            page = await c.get(rt.links.url("u1", "app"))
            assert page.status_code == 200 and "App installs and updates" in page.text
            centre = re.search(r'href="http://dispatcher/p/([^"]+)"', page.text)
            assert centre, "the unsubscribe page links to the preference centre"
            assert (await c.get(f"/p/{centre.group(1)}")).status_code == 200
            old = rt.links.url("u1", "app", issued_us=int((time.time() - 30 * 86400) * 1e6))
            page = await c.get(old)  # still unsubscribes, but no longer opens the whole centre
            assert page.status_code == 200 and "/p/" not in page.text
    finally:
        await rt.close()


def test_languages_are_negotiated_from_locale_then_accept_language() -> None:
    assert negotiate("ko_KR") == "ko"
    assert negotiate(None, "fr", accept_language="de, ko;q=0.8, en;q=0.9") == "en"
    assert negotiate(None, accept_language="de, ko;q=0.8, en;q=0.1") == "ko"
    assert negotiate(None, accept_language="ko;q=0, *") == "en"
    assert negotiate(None, accept_language="x" * 5000) == "en"


def test_categories_file_titles_fall_back_to_english_then_the_name(tmp_path: Path) -> None:
    shipped = Categories.load(Settings().templates_dir)
    assert shipped.text("app", "ko").title == "앱 설치 및 업데이트"
    (tmp_path / "categories.json").write_text(json.dumps({"billing": {"title": {"en": "Bills"}}}))
    mine = Categories.load(tmp_path)
    assert mine.text("billing", "ko").title == "Bills"
    assert mine.text("order-updates", "en").title == "Order updates"
    (tmp_path / "categories.json").write_text('{"billing": {"title": "Bills"}}')
    with pytest.raises(ConfigurationError, match="categories.json"):
        Categories.load(tmp_path)


async def test_page_files_are_served_from_this_server(anonymous: httpx.AsyncClient) -> None:
    for name, kind in (("pages.css", "text/css"), ("inbox.js", "text/javascript"),
                       ("preferences.js", "text/javascript"), ("messages/ko.json", "application/json")):
        r = await anonymous.get(f"/pages/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and r.content
    assert (await anonymous.get("/pages/../config.py")).status_code == 404
    page = await anonymous.get("/inbox")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert not re.search(r'(src|href)="(https?:)?//', page.text), "a page must load nothing from elsewhere"


def test_every_page_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["dispatcher.pages"]
    assert "dispatcher.pages" in config["packages"]
    folder = ROOT / "dispatcher" / "pages"
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files and [f for f in files if not any(fnmatch(f, pat) for pat in patterns)] == []


def _switch(page: str, value: str) -> bool | None:
    match = re.search(rf'<input type="checkbox" role="switch"[^>]*value="{re.escape(value)}"[^>]*>', page)
    return None if match is None else " checked" in match.group(0)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_an_overlong_link_is_the_friendly_page_too(anonymous: httpx.AsyncClient) -> None:
    r = await anonymous.get("/p/" + "x" * 5000)
    assert r.status_code == 404 and "This link doesn't work" in html.unescape(r.text)
