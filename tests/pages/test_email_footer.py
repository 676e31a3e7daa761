"""Every email's footer carries the recipient's own links: one-click unsubscribe (not for a
critical category) and the preference centre, which opens that recipient's switches."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from support import API_KEYS, USER_SECRET, new_id, sent_lines

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime

BASE = "https://notify.example.com"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
                    log_provider_path=tmp_path / "sent.jsonl", public_url=BASE,
                    unsubscribe_secret="footer-test-unsubscribe-secret", critical_services="app")


@pytest.fixture
async def anonymous(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as c:
        yield c


def _links(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


async def test_each_email_links_to_its_own_recipients_preference_centre(
        client: httpx.AsyncClient, anonymous: httpx.AsyncClient, runtime: Runtime) -> None:
    for user, locale in (("ann", "en"), ("min", "ko-KR")):
        r = await client.put(f"/v1/users/{user}", json={"email": f"{user}@example.com", "locale": locale})
        assert r.status_code == 200
    for category in ("default", "security"):
        r = await client.post("/v1/notifications", json={
            "id": new_id(), "recipients": ["ann", "min"], "template": "app-install",
            "channels": ["email"], "category": category, "data": {"app_name": "Foo"}})
        assert r.status_code == 202, r.text
    await runtime.worker().drain()
    assert runtime.settings.log_provider_path is not None
    emails = sent_lines(runtime.settings.log_provider_path)
    assert len(emails) == 4
    for mail in emails:
        links = _links(mail["parts"]["html"])
        centre = [link for link in links if link.startswith(f"{BASE}/p/")]
        unsubscribe = [link for link in links if link.startswith(f"{BASE}/v1/unsubscribe/")]
        assert len(centre) == 1, links
        assert len(unsubscribe) == (0 if mail["category"] == "security" else 1), links
        page = await anonymous.get(centre[0].removeprefix(BASE))
        assert page.status_code == 200, page.text
        assert ("알림 설정" in mail["parts"]["html"]) == (mail["user_id"] == "min")
    by_user = {(mail["user_id"], link) for mail in emails
               for link in _links(mail["parts"]["html"]) if "/p/" in link}
    assert len({link for _, link in by_user}) == len({user for user, _ in by_user}) == 2  # not shared


async def test_without_a_public_url_no_footer_links(client: httpx.AsyncClient, tmp_path: Path,
                                                    database_url: str) -> None:
    settings = Settings(database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
                        log_provider_path=tmp_path / "plain.jsonl")
    runtime = await Runtime.open(settings)
    try:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://d",
                                     headers={"Authorization": "Bearer app-key"}) as plain:
            assert (await plain.put("/v1/users/ann", json={"email": "ann@example.com"})).status_code == 200
            assert (await plain.post("/v1/notifications", json={
                "id": new_id(), "recipients": ["ann"], "template": "app-install",
                "channels": ["email"], "data": {"app_name": "Foo"}})).status_code == 202
        await runtime.worker().drain()
    finally:
        await runtime.close()
    [mail] = sent_lines(tmp_path / "plain.jsonl")
    assert _links(mail["parts"]["html"]) == [] and "<hr" not in mail["parts"]["html"]
