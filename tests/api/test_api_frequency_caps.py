"""Per-user frequency caps (``DISPATCHER_FREQUENCY_CAPS``), on SQLite and PostgreSQL: rows over
a cap are skipped/rate_limited without a provider call, an update or a redelivery of the same
notification does not count twice, critical categories are never capped, and two workers
draining at once admit no more than the cap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from support import API_KEYS, USER_SECRET, new_id, path_id, sent_lines

from dispatcher.config import Settings
from dispatcher.runtime import Runtime


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
        log_provider_path=tmp_path / "sent.jsonl", retry_base_delay=0.01, retry_max_delay=0.05,
        critical_services="app", frequency_caps="marketing:push=2/1d, marketing:email=1/1h")


def body(nid: str, **extra: Any) -> dict[str, Any]:
    return {"id": nid, "recipients": ["u1"], "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing", "category": "marketing", **extra}


async def _user(client: httpx.AsyncClient) -> None:
    assert (await client.put("/v1/users/u1", json={"email": "u1@example.com",
                                                    "phone": "+821012345678"})).status_code == 200
    assert (await client.post("/v1/users/u1/devices",
                              json={"token": "tok-1", "platform": "android"})).status_code in (200, 201)


async def _rows(client: httpx.AsyncClient, nid: str) -> dict[str, tuple[str, str | None]]:
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    return {d["channel"]: (d["status"], d["reason"]) for d in items}


def _sent(runtime: Runtime, channel: str) -> list[dict[str, Any]]:
    assert runtime.settings.log_provider_path is not None
    return [m for m in sent_lines(runtime.settings.log_provider_path) if m["channel"] == channel]


async def test_rows_over_a_cap_are_skipped_rate_limited(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await _user(client)
    ids = [new_id() for _ in range(3)]
    for nid in ids:
        assert (await client.post("/v1/notifications", json=body(nid))).status_code == 202
        await runtime.worker().drain()
    rows = [await _rows(client, nid) for nid in ids]
    assert [r["push"] for r in rows] == [("sent", None), ("sent", None), ("skipped", "rate_limited")]
    assert [r["email"] for r in rows] == [("sent", None)] + [("skipped", "rate_limited")] * 2
    assert [r["sms"] for r in rows] == [("sent", None)] * 3  # not capped
    assert len(_sent(runtime, "push")) == 2 and len(_sent(runtime, "email")) == 1
    detail = (await client.get(f"/v1/notifications/{path_id(ids[2])}/deliveries",
                               params={"status": "skipped"})).json()["items"]
    assert any("at most 2 marketing push per 1d" == d["detail"] for d in detail), detail

    # An update of an admitted notification re-sends its push without counting again.
    update = body(ids[0], version=2, state="completed", channels=["push"])
    assert (await client.post("/v1/notifications", json=update)).status_code == 202
    await runtime.worker().drain()
    assert (await _rows(client, ids[0]))["push"] == ("sent", None)
    assert len(_sent(runtime, "push")) == 3

    # A critical category is never capped.
    urgent = new_id()
    assert (await client.post("/v1/notifications", json=body(urgent, category="security"))).status_code == 202
    await runtime.worker().drain()
    assert {c: r[0] for c, r in (await _rows(client, urgent)).items()} == {
        "in_app": "sent", "email": "sent", "sms": "sent", "push": "sent"}


async def test_two_workers_at_once_admit_no_more_than_the_cap(
        client: httpx.AsyncClient, runtime: Runtime, settings: Settings) -> None:
    await _user(client)
    ids = [new_id() for _ in range(6)]
    for nid in ids:
        assert (await client.post("/v1/notifications", json=body(nid, channels=["push"]))).status_code == 202
    other = await Runtime.open(settings)
    try:
        await asyncio.gather(runtime.worker().drain(), other.worker().drain())
    finally:
        await other.close()
    statuses = [(await _rows(client, nid))["push"] for nid in ids]
    assert sorted(statuses) == [("sent", None)] * 2 + [("skipped", "rate_limited")] * 4
    assert len(_sent(runtime, "push")) == 2


@pytest.mark.parametrize(("caps", "fragment"), [
    ("marketing:push=3", "must look like"), ("marketing:in_app=3/1d", "email, sms or push"),
    ("security:push=3/1d", "critical"), ("marketing:push=0/1d", "positive"),
])
def test_a_bad_cap_setting_is_refused_naming_it(tmp_path: Path, caps: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(database_url=f"sqlite:///{tmp_path / 'd.db'}", api_keys=API_KEYS,
                 user_token_secret=USER_SECRET, frequency_caps=caps)


async def test_entries_too_old_to_count_are_pruned_by_the_workers(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    """The frequency log keeps what a window can still count (the longest cap, at least a
    day) and the worker's scheduler forgets the rest, so it does not grow for ever."""
    import sqlalchemy as sa

    await _user(client)
    ids = [new_id() for _ in range(3)]
    for nid in ids:
        assert (await client.post("/v1/notifications", json=body(nid))).status_code == 202
        await runtime.worker().drain()

    async def entries() -> dict[str, int]:
        async with runtime.store.db.read() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT notification_id, COUNT(*) FROM frequency_log GROUP BY notification_id"))).all()
        return {str(r[0]): int(r[1]) for r in rows}

    assert await entries() == {ids[0]: 2, ids[1]: 1}  # push twice, email once; the third capped
    two_days = 2 * 86_400_000_000
    async with runtime.store.db.write() as conn:  # the first notification, two days ago
        await conn.execute(sa.text("UPDATE frequency_log SET at = at - :d WHERE notification_id = :n"),
                           {"d": two_days, "n": ids[0]})
    stop = asyncio.Event()
    worker = asyncio.create_task(runtime.worker().run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while await entries() != {ids[1]: 1}:
            assert asyncio.get_running_loop().time() < deadline, await entries()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await worker
    # What was forgotten no longer counts (it was out of every window anyway); what was kept does.
    again, third = new_id(), new_id()
    for nid in (again, third):
        assert (await client.post("/v1/notifications", json=body(nid))).status_code == 202
        await runtime.worker().drain()
    assert {c: (await _rows(client, again))[c] for c in ("push", "email")} == {
        "push": ("sent", None), "email": ("sent", None)}
    assert {c: (await _rows(client, third))[c] for c in ("push", "email")} == {
        "push": ("skipped", "rate_limited"), "email": ("skipped", "rate_limited")}


async def test_rows_a_cap_skips_are_counted_in_the_metrics(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """``dispatcher_deliveries_total`` counts the rows as the ledger wrote them: a row the
    planner meant to send and the cap skipped is a skipped/rate_limited row, not nothing."""
    import re

    async def counted() -> float:  # the registry is the process's: compare before/after
        text = (await client.get("/metrics")).text
        found = re.search(r'dispatcher_deliveries_total\{channel="email",reason="rate_limited",'
                          r'status="skipped"\} ([0-9.]+)', text)
        return float(found.group(1)) if found else 0.0

    await _user(client)
    before = await counted()
    for _ in range(3):
        assert (await client.post("/v1/notifications", json=body(new_id()))).status_code == 202
        await runtime.worker().drain()
    assert await counted() - before == 2  # the email cap is 1 per hour: the second and third
