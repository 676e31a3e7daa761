"""Every rendered part has a maximum per channel, enforced before any provider sees it."""

from __future__ import annotations

import httpx
import pytest
from support import new_id, sent_lines

from dispatcher.part_limits import PART_LIMITS, PUSH_BYTES, bounded, fit
from dispatcher.runtime import Runtime


def test_a_part_that_fits_is_left_alone() -> None:
    assert fit("Foo is installing.", 1600) == "Foo is installing."


def test_a_long_part_is_cut_at_a_word_boundary_with_an_ellipsis() -> None:
    text = "word " * 1000
    cut = fit(text, 1600)
    assert len(cut) <= 1600 and cut.endswith("word…")


def test_a_part_without_spaces_is_cut_at_the_limit() -> None:
    assert fit("x" * 5000, 256) == "x" * 255 + "…"


@pytest.mark.parametrize("channel", sorted(PART_LIMITS))
def test_every_limited_part_of_every_channel_is_bounded(channel: str) -> None:
    parts = {part: "ab " * 5000 for part in PART_LIMITS[channel]}
    out = bounded(channel, parts)
    assert all(len(out[p]) <= limit for p, limit in PART_LIMITS[channel].items())


def test_a_push_stays_within_the_payload_bytes_in_a_multibyte_language() -> None:
    out = bounded("push", {"title": "설치 " * 200, "body": "설치가 완료되었습니다 " * 500})
    assert len(out["title"].encode()) + len(out["body"].encode()) <= PUSH_BYTES
    assert out["body"].endswith("…")


async def test_a_huge_value_in_data_reaches_no_provider_over_the_limits(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Through the worker and the log provider: the SMS and the in-app entry are bounded."""
    await client.put("/v1/users/u1", json={"email": "u1@example.com", "phone": "+821012345678"})
    nid = new_id()
    # Within the data bound but far over every part's limit.
    r = await client.post("/v1/notifications", json={
        "id": nid, "recipients": ["u1"], "template": "app-install",
        "data": {"app_name": "Foo " * 10_000}, "state": "installing"})
    assert r.status_code == 202, r.text
    await runtime.worker().drain()
    sent = {line["channel"]: line for line in sent_lines(runtime.settings.log_provider_path)}
    assert len(sent["sms"]["parts"]["text"]) <= 1600
    assert len(sent["email"]["parts"]["subject"]) <= 998
    feed, _ = await runtime.store.feed.list("u1", limit=1)
    assert len(feed[0]["title"]) <= 256 and len(feed[0]["body"]) <= 4096
