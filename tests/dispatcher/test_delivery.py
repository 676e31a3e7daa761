"""The worker's delivery of chunks: preferences, contacts, templates, retries, poison, redelivery.

Providers here are real adapters of the provider interface written for the test (scripted
outcomes), injected through ``Runtime.open``; nothing is patched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
import sqlalchemy as sa
from support import new_id

from channels.base import InvalidRecipient, Message, Receipt, TransientError, UnregisteredDevice
from dispatcher.config import Settings
from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import Unfinished
from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime
from dispatcher.store.schema import users
from dispatcher.worker import Batching, Worker


class ScriptedProvider:
    """Answers each send from a script of outcomes per address; the last one repeats."""

    name: ClassVar[str] = "scripted"

    def __init__(self, channel: str, script: dict[str, list[Exception | None]] | None = None) -> None:
        self.channel = channel  # type: ignore[misc]
        self.script = script or {}
        self.calls: list[Message] = []

    async def send(self, message: Message) -> Receipt:
        self.calls.append(message)
        outcomes = self.script.get(message.to, [None])
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if outcome is not None:
            raise outcome
        return Receipt(f"{self.channel}-{len(self.calls)}")

    async def aclose(self) -> None:
        return None

    def sent_to(self) -> list[str]:
        return [m.to for m in self.calls]


@pytest.fixture
def providers() -> dict[str, ScriptedProvider]:
    return {c: ScriptedProvider(c) for c in ("email", "sms", "push")}


@pytest.fixture
async def runtime(settings: Settings, providers: dict[str, ScriptedProvider]) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings.model_copy(update={"retry_max_attempts": 3}), providers=providers)
    yield rt
    await rt.close()


def chunk(recipients: list[str], **fields: Any) -> ChunkMessage:
    values: dict[str, Any] = {"id": new_id(), "service": "app", "template": "app-install",
                              "recipients": tuple(recipients), "data": {"app_name": "Foo"},
                              "state": "installing", **fields}
    return ChunkMessage(**values)


async def run(runtime: Runtime, *messages: ChunkMessage | str) -> None:
    await runtime.queue.send_batch([m if isinstance(m, str) else encode_chunk(m) for m in messages])
    await runtime.worker().drain()


async def ledger(runtime: Runtime, nid: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    rows, _ = await runtime.store.notifications.deliveries(nid, limit=1000)
    return {(r["user_id"], r["channel"]): (r["status"], r["reason"]) for r in rows}


async def add_user(runtime: Runtime, user_id: str, *, device: str | None = None, **fields: str) -> None:
    await runtime.store.users.upsert(user_id, fields)
    if device:
        await runtime.store.users.add_device(user_id, device, "android")


async def test_opt_outs_skip_a_channel_but_critical_categories_bypass_them(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", email="u1@example.com", phone="+821012345678")
    await runtime.store.users.merge_preferences("u1", Preferences.from_json({"channels": {"email": False},
                                                       "categories": {"app": {"sms": False}}}))
    app, security = chunk(["u1"]), chunk(["u1"], category="security")
    await run(runtime, app, security)
    assert (await ledger(runtime, app.id))[("u1", "email")] == ("skipped", "opted_out")
    assert (await ledger(runtime, app.id))[("u1", "sms")] == ("skipped", "opted_out")
    assert (await ledger(runtime, security.id))[("u1", "email")] == ("sent", None)
    assert providers["email"].sent_to() == ["u1@example.com"]


async def test_a_category_switch_overrides_the_channel_switch(runtime: Runtime) -> None:
    await add_user(runtime, "u1", email="u1@example.com")
    await runtime.store.users.merge_preferences("u1", Preferences.from_json({"channels": {"email": False},
                                                       "categories": {"app": {"email": True}}}))
    message = chunk(["u1"])
    await run(runtime, message)
    assert (await ledger(runtime, message.id))[("u1", "email")] == ("sent", None)


async def test_missing_contacts_are_skipped_not_failed(runtime: Runtime) -> None:
    await add_user(runtime, "u1", email="u1@example.com")
    message = chunk(["u1", "ghost"])
    await run(runtime, message)
    rows = await ledger(runtime, message.id)
    assert rows[("u1", "sms")] == ("skipped", "no_contact")
    assert rows[("u1", "push")] == ("skipped", "no_contact")
    assert rows[("ghost", "in_app")] == ("sent", None)
    assert {rows[("ghost", c)] for c in ("email", "sms", "push")} == {("skipped", "no_contact")}
    [entry], _ = await runtime.store.feed.list("ghost", limit=5)
    assert entry["title"] == "Installing Foo…"


async def test_contact_data_is_checked_again_at_send_time(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1")
    async with runtime.store.db.write() as conn:  # written around the API, e.g. before a rule change
        await conn.execute(users.update().where(users.c.id == "u1")
                           .values(email="no-at-sign", phone="12"))
    message = chunk(["u1"])
    await run(runtime, message)
    rows = await ledger(runtime, message.id)
    assert rows[("u1", "email")] == ("skipped", "invalid_contact")
    assert rows[("u1", "sms")] == ("skipped", "invalid_contact")
    assert providers["email"].calls == [] and providers["sms"].calls == []


async def test_users_get_their_locale_with_fallback(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "ko", device="tok-ko", locale="ko-KR")
    await add_user(runtime, "fr", device="tok-fr", locale="fr-FR")
    await run(runtime, chunk(["ko", "fr"]))
    titles = {m.to: m.parts["title"] for m in providers["push"].calls}
    assert titles == {"tok-ko": "Foo 설치 중…", "tok-fr": "Installing Foo…"}


async def test_a_template_error_fails_that_notification_not_the_worker(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", email="u1@example.com")
    broken, fine = chunk(["u1"], data={}), chunk(["u1"])
    await run(runtime, broken, fine)
    rows = await ledger(runtime, broken.id)
    assert set(rows.values()) == {("failed", "template_error")}
    assert (await ledger(runtime, fine.id))[("u1", "email")] == ("sent", None)
    assert await runtime.queue.depth() == 0


async def test_transient_errors_are_retried_until_sent(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", email="u1@example.com")
    providers["email"].script["u1@example.com"] = [TransientError("throttled", retry_after=0.01),
                                                   TransientError("503"), None]
    message = chunk(["u1"], channels=("email",))
    await run(runtime, message)
    rows, _ = await runtime.store.notifications.deliveries(message.id, limit=10)
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 3)]
    assert len(providers["email"].calls) == 3


async def test_retries_end_in_retries_exhausted(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", phone="+821012345678")
    providers["sms"].script["+821012345678"] = [TransientError("timeout")]
    message = chunk(["u1"], channels=("sms",))
    await run(runtime, message)
    assert (await ledger(runtime, message.id))[("u1", "sms")] == ("failed", "retries_exhausted")
    assert len(providers["sms"].calls) == 3


async def test_permanent_errors_are_never_retried(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", email="u1@example.com")
    providers["email"].script["u1@example.com"] = [InvalidRecipient("mailbox does not exist")]
    message = chunk(["u1"], channels=("email",))
    await run(runtime, message)
    assert (await ledger(runtime, message.id))[("u1", "email")] == ("failed", "invalid_contact")
    assert len(providers["email"].calls) == 1


async def test_an_unregistered_token_deactivates_its_device_only(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", device="gone")
    await runtime.store.users.add_device("u1", "alive", "ios")
    await add_user(runtime, "u2", device="gone-too")
    providers["push"].script = {"gone": [UnregisteredDevice("UNREGISTERED")],
                                "gone-too": [UnregisteredDevice("UNREGISTERED")]}
    message = chunk(["u1", "u2"], channels=("push",))
    await run(runtime, message)
    rows = await ledger(runtime, message.id)
    assert rows[("u1", "push")] == ("sent", None)
    assert rows[("u2", "push")] == ("failed", "unregistered_device")
    devices = {d.token: d.active for u in ("u1", "u2") for d in (await runtime.store.users.get(u)).devices}
    assert devices == {"gone": False, "alive": True, "gone-too": False}
    second = chunk(["u2"], channels=("push",))
    await run(runtime, second)
    assert (await ledger(runtime, second.id))[("u2", "push")] == ("skipped", "no_contact")


async def test_a_redelivered_chunk_sends_nothing_twice(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    await add_user(runtime, "u1", email="u1@example.com", phone="+821012345678", device="t1")
    message = chunk(["u1"])
    await run(runtime, message, message)
    await run(runtime, message)
    assert [len(p.calls) for p in providers.values()] == [1, 1, 1]
    [entry], _ = await runtime.store.feed.list("u1", limit=5)
    assert entry["notification_id"] == message.id


@pytest.mark.parametrize(("body", "reason"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"id": "app#nope", "service": "app", "template": "app-install",
                 "recipients": ["u1"]}), "does not match"),
    (json.dumps({"id": new_id("billing"), "service": "app", "template": "app-install",
                 "recipients": ["u1"]}), "belongs to service 'billing'"),
    (json.dumps({"id": new_id("intruder"), "service": "intruder", "template": "app-install",
                 "recipients": ["u1"]}), "unknown service 'intruder'"),
    (json.dumps({"id": new_id(), "service": "app", "template": "nope", "recipients": ["u1"]}),
     "unknown template 'nope'"),
    (json.dumps({"id": new_id(), "service": "app", "template": "app-install", "recipients": []}),
     "recipients"),
    (json.dumps({"id": new_id(), "service": "app", "template": "app-install", "recipients": ["u1"],
                 "channels": ["fax"]}), "fax"),
])
async def test_poison_messages_go_to_the_dlq_with_the_reason_at_once(
        runtime: Runtime, body: str, reason: str) -> None:
    await run(runtime, body)
    [letter] = await runtime.queue.dead_letters()
    assert reason in letter.reason and letter.receive_count == 1 and letter.body == body
    assert await runtime.queue.depth() == 0


async def test_a_channel_the_template_lacks_is_refused_at_the_api_and_in_the_queue(
        settings: Settings, tmp_path: Path) -> None:
    import httpx

    from dispatcher.api import create_app

    folder = tmp_path / "templates" / "feed-only" / "default"
    folder.mkdir(parents=True)
    (folder / "in_app.title.txt").write_text("Hello")
    (folder / "in_app.body.txt").write_text("{{ state }}")
    rt = await Runtime.open(settings.model_copy(update={"templates_dir": tmp_path / "templates"}))
    try:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://d",
                                     headers={"Authorization": "Bearer app-key"}) as client:
            r = await client.post("/v1/notifications", json={
                "id": new_id(), "recipients": ["u1"], "template": "feed-only", "channels": ["email"]})
        assert r.status_code == 422 and "email" in r.json()["error"]["message"]
        await run(rt, chunk(["u1"], template="feed-only", channels=("in_app", "email")))
        [letter] = await rt.queue.dead_letters()
        assert "no parts for channel(s) ['email']" in letter.reason
    finally:
        await rt.close()


async def test_a_chunk_loads_users_in_bulk_not_per_recipient(runtime: Runtime) -> None:
    for i in range(40):
        await add_user(runtime, f"u{i}", email=f"u{i}@example.com")
    statements = _statements_sent(runtime)
    message = chunk([f"u{i}" for i in range(40)])
    await run(runtime, message)
    user_selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")
                    and "FROM users" in s]
    assert len(user_selects) == 1
    assert len(await ledger(runtime, message.id)) == 160


def _statements_sent(runtime: Runtime) -> list[str]:
    """Every statement the store's connections run from now on, as the database gets it:
    also those ``dispatcher.store.direct`` runs on the driver's connection, not the engine's
    (SQLite's trace callback; on PostgreSQL a psycopg cursor that notes its queries), set on
    each connection at checkout."""
    sent: list[str] = []
    db = runtime.store.db

    class Noting(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return await super().execute(query, *args, **kwargs)

        async def executemany(self, query: Any, *args: Any, **kwargs: Any) -> None:
            sent.append(str(query))
            await super().executemany(query, *args, **kwargs)

    def checkout(dbapi_conn: Any, *_: Any) -> None:
        driver = dbapi_conn.driver_connection
        if db.dialect == "sqlite":
            driver._conn.set_trace_callback(sent.append)
        else:
            driver.cursor_factory = Noting

    sa.event.listen(db.engine.sync_engine.pool, "checkout", checkout)
    return sent


async def test_emails_carry_an_unsubscribe_link_except_critical_ones(
        settings: Settings, providers: dict[str, ScriptedProvider]) -> None:
    rt = await Runtime.open(settings.model_copy(update={"public_url": "https://n.example.com"}),
                            providers=providers)
    try:
        await add_user(rt, "u1", email="u1@example.com")
        await run(rt, chunk(["u1"], channels=("email",)),
                  chunk(["u1"], channels=("email",), category="security"))
    finally:
        await rt.close()
    by_category = {m.category: m for m in providers["email"].calls}
    app, security = by_category["app"], by_category["security"]
    assert app.unsubscribe_url is not None
    assert rt.links is not None and rt.links.verify(app.unsubscribe_url.rsplit("/", 1)[1]) == ("u1", "app")
    assert security.unsubscribe_url is None


async def test_small_notifications_and_their_updates_share_one_unit_of_work(
        runtime: Runtime, providers: dict[str, ScriptedProvider]) -> None:
    """Many single-recipient notifications, an update of one of them, a chunk of an unknown
    template and a duplicate, received together: each is delivered as if it were alone."""
    for i in range(20):
        await add_user(runtime, f"u{i}", email=f"u{i}@example.com", device=f"t{i}")
    first = [chunk([f"u{i}"]) for i in range(20)]
    update = first[0].model_copy(update={"version": 2, "state": "completed", "channels": ("push",)})
    broken = chunk(["u1"], template="no-such-template")
    await run(runtime, *first, update, broken, first[5])
    for message in first[1:]:
        rows = await ledger(runtime, message.id)
        assert rows[(message.recipients[0], "email")] == ("sent", None)
        assert rows[(message.recipients[0], "in_app")] == ("sent", None)
    assert (await ledger(runtime, first[0].id))[("u0", "push")] == ("sent", None)
    assert sorted(m.to for m in providers["email"].calls) == sorted(f"u{i}@example.com" for i in range(20))
    # v1's push was still pending when its update came in the same unit of work: the update
    # takes the row over, so the phone gets "completed" once, not a stale "installing" first.
    [push] = [m for m in providers["push"].calls if m.to == "t0"]
    assert push.data["version"] == "2"
    assert providers["push"].sent_to().count("t5") == 1  # the duplicate sent nothing
    [letter] = await runtime.queue.dead_letters()
    assert "no-such-template" in letter.reason
    assert await runtime.queue.depth() == 0
    feed, _ = await runtime.store.feed.list("u0", limit=5)
    assert [(e["state"], e["version"]) for e in feed] == [("completed", 2)]


def _worker(runtime: Runtime, linger: float, messages: int = 64) -> Worker:
    return Worker(runtime.queue, runtime.deliverer, concurrency=4, visibility_timeout=30,
                  known_services=None, batching=Batching(messages=messages, recipients=500, linger=linger))


def _ids(batches: list[list[Any]]) -> list[list[str]]:
    return [[r.chunk.id for r in batch] for batch in batches]


async def test_steady_small_traffic_waits_for_more_messages(runtime: Runtime) -> None:
    """While small messages keep coming, a take waits the linger for more: C, sent after B was
    taken, joins B's unit of work."""
    worker = _worker(runtime, linger=2.0)
    await runtime.queue.send_batch([encode_chunk(chunk(["u0"]))])
    assert len(await worker._take(4, 0)) == 1  # a message just before: traffic is steady
    b, c = chunk(["u1"]), chunk(["u2"])
    await runtime.queue.send_batch([encode_chunk(b)])
    take = asyncio.create_task(worker._take(4, 0))
    while (await runtime.queue.stats()).visible:  # until B is taken
        await asyncio.sleep(0.005)
    await runtime.queue.send_batch([encode_chunk(c)])
    assert _ids(await asyncio.wait_for(take, timeout=30)) == [[b.id, c.id]]


async def test_a_message_after_a_quiet_spell_waits_for_nothing(runtime: Runtime) -> None:
    """The first message after a quiet spell is taken at once, however long the linger: with
    a linger of a minute, the take still ends well within 30 s."""
    worker = _worker(runtime, linger=60.0)
    b = chunk(["u1"])
    await runtime.queue.send_batch([encode_chunk(b)])
    assert _ids(await asyncio.wait_for(worker._take(4, 0), timeout=30)) == [[b.id]]


async def test_a_worker_behind_takes_the_next_batch_at_once(runtime: Runtime) -> None:
    """A take that came back full means more is waiting: the next take does not linger, even
    while traffic is steady. Ten messages, batches of four, a linger of a minute: three takes
    in a row, none waiting (each well within 30 s); then, the queue caught up, steady traffic
    lingers again."""
    worker = _worker(runtime, linger=60.0, messages=4)
    sent = [chunk([f"u{i}"]) for i in range(10)]
    await runtime.queue.send_batch([encode_chunk(c) for c in sent])
    taken: list[str] = []
    for expected in (4, 4, 2):
        [batch] = _ids(await asyncio.wait_for(worker._take(1, 0), timeout=30))
        assert len(batch) == expected
        taken += batch
    assert sorted(taken) == sorted(c.id for c in sent)
    await runtime.queue.send_batch([encode_chunk(chunk(["u1"]))])
    take = asyncio.create_task(worker._take(1, 0))  # steady, and the last take was not full
    done, _ = await asyncio.wait({take}, timeout=0.5)
    assert not done  # it lingers (for a minute)
    take.cancel()


class _HeldFirstPush(ScriptedProvider):
    """A push provider whose first send waits until released."""

    def __init__(self) -> None:
        super().__init__("push")
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, message: Message) -> Receipt:
        if not self.calls:
            self.calls.append(message)
            self.entered.set()
            await self.release.wait()
            return Receipt("push-held")
        return await super().send(message)


async def test_an_update_sends_after_the_older_send_it_found_in_flight_is_recorded(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An update finds the push of v1 in flight (``sending``), so it cannot take the row over
    yet; v1's outcome is recorded before the update looks again. The update must still send
    its push once v1's is recorded. (It acked with nothing sent: at 550 small notifications/s
    with batches of 256, 3-176 updates of 8,000-11,000 never reached the phone.) The order is
    forced by letting v1 finish when the update first reads its unfinished rows."""
    push = _HeldFirstPush()
    rt = await Runtime.open(settings, providers={"email": ScriptedProvider("email"),
                                                 "sms": ScriptedProvider("sms"), "push": push})
    try:
        await add_user(rt, "u1", email="u1@example.com", device="t1")
        v1 = chunk(["u1"])
        first = asyncio.create_task(rt.deliverer.deliver(v1))
        await asyncio.wait_for(push.entered.wait(), 30)
        unfinished = rt.store.ledger.unfinished

        async def once_v1_is_recorded(notification_id: str, user_ids: Sequence[str]) -> list[Unfinished]:
            push.release.set()
            await first
            return await unfinished(notification_id, user_ids)

        monkeypatch.setattr(rt.store.ledger, "unfinished", once_v1_is_recorded)
        v2 = v1.model_copy(update={"version": 2, "state": "completed", "channels": ("push",)})
        await asyncio.wait_for(rt.deliverer.deliver(v2), 30)
        rows, _ = await rt.store.notifications.deliveries(v1.id, limit=10)
    finally:
        await rt.close()
    assert [m.data["version"] for m in push.calls] == ["1", "2"]
    assert {r["channel"]: (r["version"], r["status"]) for r in rows}["push"] == (2, "sent")
