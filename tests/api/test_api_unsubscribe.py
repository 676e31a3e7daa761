"""One-click unsubscribe links: signed per user and category; POST switches email off."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher.unsubscribe import InvalidLink, UnsubscribeLinks


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
    token = links.token("u1", "marketing")
    assert links.verify(token) == ("u1", "marketing")
    assert links.url("u1", "marketing") == f"https://n.example.com/v1/unsubscribe/{token}"
    forged = UnsubscribeLinks("https://n.example.com", "secret").token("u2", "marketing")
    with pytest.raises(InvalidLink):
        links.verify(token.split(".")[0] + "." + forged.split(".")[1])
    with pytest.raises(InvalidLink):
        UnsubscribeLinks("https://n.example.com", "other").verify(token)


async def test_one_click_post_turns_email_off_for_that_category_only(
        runtime: Runtime, public: httpx.AsyncClient) -> None:
    url = runtime.links.url("u1", "app")  # type: ignore[union-attr]
    page = await public.get(url)
    assert page.status_code == 200 and "<form method=post>" in page.text
    assert (await runtime.store.users.get("u1")) is None  # GET changes nothing
    r = await public.post(url, data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and "no longer" in r.text
    prefs = (await runtime.store.users.get("u1")).preferences  # type: ignore[union-attr]
    assert prefs.to_json() == {"channels": {}, "categories": {"app": {"email": False}}}


async def test_a_forged_link_is_a_404(public: httpx.AsyncClient) -> None:
    r = await public.post("/v1/unsubscribe/eyJ1In0.forged")
    assert r.status_code == 404 and r.json()["error"]["code"] == "invalid_link"
