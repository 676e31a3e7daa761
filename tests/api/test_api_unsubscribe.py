"""One-click unsubscribe links: signed per user, category and issue time; POST switches email
off, unless the link is for a critical category or older than a later choice (409)."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator

import httpx
import pytest
from support import user_token

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher.unsubscribe import InvalidLink, UnsubscribeLinks, _b64


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings.model_copy(update={"public_url": "https://notify.example.com/"}))
    yield rt
    await rt.close()


@pytest.fixture
async def public(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no API key: the link alone must be enough."""
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="https://notify.example.com") as c:
        yield c


def test_links_verify_and_cannot_be_altered() -> None:
    links = UnsubscribeLinks("https://n.example.com", "secret")
    token = links.token("u1", "marketing", issued_us=1_700_000_000_000_000)
    assert links.read(token) == ("u1", "marketing", 1_700_000_000_000_000)
    assert links.verify(token) == ("u1", "marketing")
    token = links.token("u1", "marketing", 5)
    assert links.url("u1", "marketing", 5) == f"https://n.example.com/v1/unsubscribe/{token}"
    forged = UnsubscribeLinks("https://n.example.com", "secret").token("u2", "marketing")
    with pytest.raises(InvalidLink):
        links.verify(token.split(".")[0] + "." + forged.split(".")[1])
    with pytest.raises(InvalidLink):
        UnsubscribeLinks("https://n.example.com", "other").verify(token)


async def test_one_click_post_turns_email_off_for_that_category_only(
        runtime: Runtime, public: httpx.AsyncClient) -> None:
    url = runtime.links.url("u1", "app")  # type: ignore[union-attr]
    page = await public.get(url)
    assert page.status_code == 200 and '<form method="post">' in page.text
    assert (await runtime.store.users.get("u1")) is None  # GET changes nothing
    r = await public.post(url, data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and "no longer" in r.text
    prefs = (await runtime.store.users.get("u1")).preferences  # type: ignore[union-attr]
    assert prefs.to_json() == {"channels": {}, "categories": {"app": {"email": False}}}


async def test_a_forged_link_is_a_404_page(public: httpx.AsyncClient) -> None:
    r = await public.post("/v1/unsubscribe/eyJ1In0.forged")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "This link doesn't work" in html.unescape(r.text)


@pytest.mark.parametrize("signature", ["%C3%A9", "%E2%9C%93%E2%9C%93", "%00"])
async def test_a_non_ascii_signature_is_a_404_not_a_500(public: httpx.AsyncClient, signature: str) -> None:
    payload = _b64(b'["u1","app",1]')
    for method in ("GET", "POST"):
        r = await public.request(method, f"/v1/unsubscribe/{payload}.{signature}")
        assert r.status_code == 404 and "This link doesn't work" in html.unescape(r.text)


async def test_a_replayed_link_does_not_undo_a_later_choice(
        runtime: Runtime, public: httpx.AsyncClient) -> None:
    old = runtime.links.url("u1", "app")  # type: ignore[union-attr]
    assert (await public.post(old)).status_code == 200  # unsubscribed
    me = {"Authorization": f"Bearer {user_token('u1')}"}
    r = await public.put("/v1/users/u1/preferences", headers=me,
                         json={"categories": {"app": {"email": True}}})  # the user changes their mind
    assert r.status_code == 200
    for method in ("GET", "POST"):
        again = await public.request(method, old)
        assert again.status_code == 409 and "no effect" in again.text
    prefs = (await runtime.store.users.get("u1")).preferences  # type: ignore[union-attr]
    assert prefs.categories["app"] == {"email": True}
    newer = runtime.links.url("u1", "app")  # type: ignore[union-attr]  # the next email's link
    assert (await public.post(newer)).status_code == 200
    prefs = (await runtime.store.users.get("u1")).preferences  # type: ignore[union-attr]
    assert prefs.categories["app"] == {"email": False}


async def test_an_older_link_still_works_when_nothing_switched_the_category_on(
        runtime: Runtime, public: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    link = runtime.links.url("u1", "app")  # type: ignore[union-attr]
    await client.put("/v1/users/u1", json={"email": "new@example.com"})  # a later, unrelated change
    assert (await public.post(link)).status_code == 200
    legacy = UnsubscribeLinks("https://notify.example.com", runtime.settings.unsubscribe_key() or "")
    payload = _b64(b'["u2","app"]')  # a link minted before links carried their issue time
    assert (await public.post(f"/v1/unsubscribe/{payload}.{legacy._sign(payload)}")).status_code == 200
    prefs = (await runtime.store.users.get("u2")).preferences  # type: ignore[union-attr]
    assert prefs.categories["app"] == {"email": False}


async def test_a_link_for_a_critical_category_says_it_has_no_effect(
        runtime: Runtime, public: httpx.AsyncClient) -> None:
    link = runtime.links.url("u1", "security")  # type: ignore[union-attr]  # never minted by us
    for method in ("GET", "POST"):
        r = await public.request(method, link)
        assert r.status_code == 409 and "no effect" in r.text and "<form" not in r.text
    assert (await runtime.store.users.get("u1")) is None
