"""The store on both engines: users, preferences, devices, headers, ledger claims and the feed."""

from __future__ import annotations

from collections.abc import Collection

from support import new_id

from dispatcher.model import ChunkRows, Claim, DeliveryStatus, FeedEntry, HeaderUpdate, Reason, RowKey, RowState
from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime


def header(nid: str, version: int, state: str, channels: tuple[str, ...] = ("in_app",),
           recipients: int = 1) -> HeaderUpdate:
    return HeaderUpdate(id=nid, service="app", version=version, template="app-install",
                        data={"app_name": "Foo"}, state=state, category="app", locale=None,
                        channels=channels, recipients=recipients)


async def test_user_upsert_keeps_fields_not_given(runtime: Runtime) -> None:
    users = runtime.store.users
    await users.upsert("u1", {"email": "a@example.com", "phone": "+821012345678"})
    user = await users.upsert("u1", {"locale": "ko-KR"})
    assert (user.email, user.phone, user.locale) == ("a@example.com", "+821012345678", "ko-KR")


async def test_preferences_put_merges_channels_and_categories(runtime: Runtime) -> None:
    users = runtime.store.users
    await users.merge_preferences("u1", Preferences({"email": False}, {"marketing": {"sms": False}}))
    merged = await users.merge_preferences("u1", Preferences({"push": False},
                                                             {"marketing": {"push": True}}))
    assert merged.to_json() == {"channels": {"email": False, "push": False},
                      "categories": {"marketing": {"sms": False, "push": True}}}


async def test_a_device_token_moves_to_its_newest_owner(runtime: Runtime) -> None:
    users = runtime.store.users
    await users.add_device("u1", "tok", "android")
    await users.add_device("u2", "tok", "ios")
    loaded = await users.load_many(["u1", "u2"])
    assert loaded["u1"].devices == ()
    assert [(d.token, d.platform) for d in loaded["u2"].devices] == [("tok", "ios")]


async def test_deactivated_devices_are_not_loaded_for_sending(runtime: Runtime) -> None:
    users = runtime.store.users
    await users.add_device("u1", "dead", "android")
    await users.add_device("u1", "alive", "web")
    await users.deactivate_devices(["dead"])
    assert [d.token for d in (await users.load_many(["u1"]))["u1"].devices] == ["alive"]
    assert {d.token: d.active for d in (await users.get("u1")).devices} == {"dead": False, "alive": True}


async def test_header_keeps_the_highest_version_whatever_the_arrival_order(runtime: Runtime) -> None:
    nid = new_id()
    notifications = runtime.store.notifications
    await notifications.upsert(header(nid, 2, "completed"))
    await notifications.upsert(header(nid, 1, "installing", channels=("in_app", "email"), recipients=3))
    stored = await notifications.get(nid)
    assert (stored.version, stored.state) == (2, "completed")
    assert stored.channels == ("in_app", "email") and stored.recipients == 3


PENDING, SENT, FAILED, SKIPPED = (DeliveryStatus.PENDING, DeliveryStatus.SENT,
                                   DeliveryStatus.FAILED, DeliveryStatus.SKIPPED)


def rows_of(nid: str,
            *planned: tuple[str, str, DeliveryStatus] | tuple[str, str, DeliveryStatus, Reason]) -> list[RowState]:
    return [RowState(RowKey(nid, p[0], p[1]), *p[2:]) for p in planned]  # type: ignore[arg-type]


async def open_rows(runtime: Runtime, nid: str, version: int, rows: list[RowState], *,
                    insert: set[str], reset: Collection[str] = ()) -> set[RowKey]:
    opened = await runtime.store.ledger.open(
        [], [ChunkRows(nid, version, rows, frozenset(insert), frozenset(reset), {})])
    [won] = opened.won
    return won


async def test_a_chunk_opened_twice_wins_its_rows_once(runtime: Runtime) -> None:
    ledger, nid = runtime.store.ledger, new_id()
    planned = rows_of(nid, ("u1", "email", PENDING), ("u2", "email", SKIPPED, Reason.NO_CONTACT))
    first = await open_rows(runtime, nid, 1, planned, insert={"email"})
    assert first == {RowKey(nid, "u1", "email"), RowKey(nid, "u2", "email")}
    key = RowKey(nid, "u1", "email")
    assert await ledger.claim([(key, 1)], "t1") == {key}
    assert await open_rows(runtime, nid, 1, planned, insert={"email"}) == set()


async def test_one_unit_of_work_opens_chunks_of_several_notifications(runtime: Runtime) -> None:
    a, b = new_id(), new_id()
    opened = await runtime.store.ledger.open(
        [header(a, 1, "installing"), header(b, 1, "installing")],
        [ChunkRows(a, 1, rows_of(a, ("u1", "sms", PENDING)), frozenset({"sms"}), frozenset(), {}),
         ChunkRows(b, 1, rows_of(b, ("u1", "sms", PENDING)), frozenset({"sms"}), frozenset(), {})])
    assert opened.won == [{RowKey(a, "u1", "sms")}, {RowKey(b, "u1", "sms")}]
    assert (await runtime.store.notifications.get(a)) is not None
    assert (await runtime.store.notifications.get(b)) is not None


async def test_open_claims_the_first_rows_to_send_and_only_those(runtime: Runtime) -> None:
    nid = new_id()
    rows = rows_of(nid, ("u1", "sms", PENDING), ("u2", "sms", PENDING), ("u3", "sms", PENDING),
                   ("u4", "sms", SKIPPED, Reason.NO_CONTACT))
    opened = await runtime.store.ledger.open(
        [], [ChunkRows(nid, 1, rows, frozenset({"sms"}), frozenset(), {})], Claim("tok", 2))
    assert opened.claimed == {RowKey(nid, "u1", "sms"): 1, RowKey(nid, "u2", "sms"): 1}
    statuses = {r.key.user_id: r.status for r in await runtime.store.ledger.unfinished(
        nid, ["u1", "u2", "u3", "u4"])}
    assert statuses == {"u1": "sending", "u2": "sending", "u3": "pending"}
    # the claim holder records; the unclaimed row is still there for a later claim
    await runtime.store.ledger.record([(RowState(RowKey(nid, "u1", "sms"), SENT), "tok")])
    assert await runtime.store.ledger.claim([(RowKey(nid, "u3", "sms"), 1)], "t2") == {
        RowKey(nid, "u3", "sms")}


async def test_a_later_chunk_of_one_unit_of_work_takes_over_an_earlier_ones_row(
        runtime: Runtime) -> None:
    nid = new_id()
    v1 = ChunkRows(nid, 1, rows_of(nid, ("u1", "push", PENDING)), frozenset({"push"}),
                   frozenset({"push"}), {})
    v2 = ChunkRows(nid, 2, rows_of(nid, ("u1", "push", PENDING)), frozenset({"push"}),
                   frozenset({"push"}), {})
    opened = await runtime.store.ledger.open([], [v1, v2], Claim("tok", 10))
    key = RowKey(nid, "u1", "push")
    assert opened.won == [{key}, {key}]
    assert opened.claimed == {key: 2}
    [row] = await runtime.store.ledger.unfinished(nid, ["u1"])
    assert (row.version, row.status) == (2, "sending")


async def test_a_pending_row_is_claimed_by_one_sender_only(runtime: Runtime) -> None:
    ledger, nid = runtime.store.ledger, new_id()
    await open_rows(runtime, nid, 1, rows_of(nid, ("u1", "sms", PENDING)), insert={"sms"})
    key = RowKey(nid, "u1", "sms")
    assert await ledger.claim([(key, 1)], "first") == {key}
    assert await ledger.claim([(key, 1)], "second") == set()


async def test_a_claim_wins_exactly_the_pending_rows_at_their_versions(runtime: Runtime) -> None:
    ledger, a, b = runtime.store.ledger, new_id(), new_id()
    users = [f"u{n}" for n in range(6)]
    await open_rows(runtime, a, 1, rows_of(a, *((u, "sms", PENDING) for u in users),
                                           *((u, "email", PENDING) for u in users)),
                    insert={"sms", "email"})
    await open_rows(runtime, b, 1, rows_of(b, ("u0", "sms", PENDING)), insert={"sms"})
    taken = RowKey(a, "u1", "sms")
    assert await ledger.claim([(taken, 1)], "other") == {taken}

    # one notification and channel (a bulk's batch): u1 is taken, "u9" has no row
    batch = [(RowKey(a, u, "sms"), 1) for u in [*users, "u9"]]
    assert await ledger.claim(batch, "mine") == {RowKey(a, u, "sms") for u in users if u != "u1"}
    # the wrong version wins nothing; several notifications and channels in one call
    assert await ledger.claim([(RowKey(a, "u0", "email"), 2)], "mine") == set()
    mixed = [(RowKey(a, "u0", "email"), 1), (RowKey(a, "u2", "email"), 1),
             (RowKey(b, "u0", "sms"), 1), (RowKey(a, "u0", "sms"), 1)]
    assert await ledger.claim(mixed, "mine") == {
        RowKey(a, "u0", "email"), RowKey(a, "u2", "email"), RowKey(b, "u0", "sms")}

    unfinished = {(r.key.user_id, r.key.channel): r.status for r in await ledger.unfinished(a, users)}
    assert unfinished == {**{(u, "sms"): "sending" for u in users},
                          **{(u, "email"): "pending" for u in users},
                          ("u0", "email"): "sending", ("u2", "email"): "sending"}
    # only the holder of a claim records, and each row's claim is the caller's
    await ledger.record([(RowState(RowKey(a, "u1", "sms"), SENT), "mine"),
                         (RowState(RowKey(a, "u3", "sms"), SENT), "mine")])
    assert {r.key.user_id for r in await ledger.unfinished(a, users) if r.key.channel == "sms"} == {
        "u0", "u1", "u2", "u4", "u5"}


async def test_only_the_claim_holder_records_an_outcome(runtime: Runtime) -> None:
    ledger, nid = runtime.store.ledger, new_id()
    await open_rows(runtime, nid, 1, rows_of(nid, ("u1", "sms", PENDING)), insert={"sms"})
    key = RowKey(nid, "u1", "sms")
    await ledger.claim([(key, 1)], "mine")
    await ledger.record([(RowState(key, FAILED, Reason.PROVIDER_REJECTED), "not-mine")])
    assert [r.status for r in await ledger.unfinished(nid, ["u1"])] == ["sending"]
    await ledger.record([(RowState(key, SENT, provider_message_id="m-1"), "mine")])
    assert await ledger.unfinished(nid, ["u1"]) == []


async def test_a_newer_version_takes_over_rows_of_reset_channels_only(runtime: Runtime) -> None:
    ledger, nid = runtime.store.ledger, new_id()
    rows = rows_of(nid, ("u1", "email", PENDING), ("u1", "sms", PENDING))
    await open_rows(runtime, nid, 1, rows, insert={"email", "sms"})
    email, sms = RowKey(nid, "u1", "email"), RowKey(nid, "u1", "sms")
    await ledger.claim([(email, 1), (sms, 1)], "v1")
    await ledger.record([(RowState(email, SENT), "v1"), (RowState(sms, SENT), "v1")])
    assert await open_rows(runtime, nid, 2, rows, insert=set(), reset={"email"}) == {email}
    assert await open_rows(runtime, nid, 1, rows, insert=set(), reset={"email"}) == set()


async def test_stale_claims_settle_as_outcome_unknown(runtime: Runtime) -> None:
    ledger, nid = runtime.store.ledger, new_id()
    await open_rows(runtime, nid, 1, rows_of(nid, ("u1", "push", PENDING)), insert={"push"})
    key = RowKey(nid, "u1", "push")
    await ledger.claim([(key, 1)], "dead-worker")
    [row] = await ledger.unfinished(nid, ["u1"])
    assert sum((await ledger.resolve_stale([key], older_than=row.claimed_at, resend=False)).values()) == 0
    assert await ledger.resolve_stale([key], older_than=row.claimed_at + 1, resend=False) == {"push": 1}
    rows, _ = await runtime.store.notifications.deliveries(nid, limit=10)
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", "outcome_unknown")]


def entry(nid: str, version: int, title: str, user: str = "u1") -> FeedEntry:
    return FeedEntry(user, nid, version, title, f"{title} body", "installing", "app")


async def test_feed_entries_update_in_place_only_from_newer_versions(runtime: Runtime) -> None:
    db, feed, nid = runtime.store.db, runtime.store.feed, new_id()
    async with db.write() as conn:
        await feed.write(conn, [entry(nid, 2, "v2")])
    await feed.mark_read("u1", nid)
    async with db.write() as conn:
        await feed.write(conn, [entry(nid, 1, "v1"), entry(nid, 2, "v2 again")])
    [item], _ = await feed.list("u1", limit=10)
    assert (item["title"], item["read"]) == ("v2", True)
    async with db.write() as conn:
        await feed.write(conn, [entry(nid, 3, "v3")])
    [item], _ = await feed.list("u1", limit=10)
    assert (item["title"], item["read"]) == ("v3", False)


async def test_one_write_of_an_entrys_versions_leaves_the_newest(runtime: Runtime) -> None:
    """A notification and its update in one unit of work: the new entry is the update's,
    whatever their order (PostgreSQL's one statement may not upsert one row twice)."""
    db, feed, a, b = runtime.store.db, runtime.store.feed, new_id(), new_id()
    async with db.write() as conn:
        await feed.write(conn, [entry(a, 1, "a1"), entry(b, 2, "b2"), entry(a, 2, "a2"),
                                entry(b, 1, "b1"), entry(a, 2, "u2", user="u2")])
    items, _ = await feed.list("u1", limit=10)
    assert sorted((i["notification_id"], i["version"], i["title"]) for i in items) == sorted(
        [(a, 2, "a2"), (b, 2, "b2")])
    assert [i["title"] for i in (await feed.list("u2", limit=10))[0]] == ["u2"]


async def test_feed_pages_newest_first_without_gaps_or_repeats(runtime: Runtime) -> None:
    db, feed = runtime.store.db, runtime.store.feed
    ids = [new_id() for _ in range(7)]
    for nid in ids:
        async with db.write() as conn:
            await feed.write(conn, [entry(nid, 1, nid)])
    seen, cursor = [], None
    while True:
        page, cursor = await feed.list("u1", limit=3, cursor=cursor)
        seen += [row["notification_id"] for row in page]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_read_marks_change_the_unread_count(runtime: Runtime) -> None:
    db, feed = runtime.store.db, runtime.store.feed
    ids = [new_id() for _ in range(3)]
    async with db.write() as conn:
        await feed.write(conn, [entry(nid, 1, "t") for nid in ids])
    assert await feed.mark_read("u1", ids[0]) is True
    assert await feed.mark_read("u1", new_id()) is False
    assert await feed.unread_count("u1") == 2
    assert await feed.mark_all_read("u1") == 2
    assert await feed.unread_count("u1") == 0


async def test_processes_starting_together_create_the_schema_once(database_url: str) -> None:
    import asyncio

    from dispatcher.store import Database

    databases = [Database(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(db.create_schema() for db in databases))
        await databases[0].ping()
    finally:
        for db in databases:
            await db.close()


async def test_an_update_takes_over_many_rows_of_a_bulk_at_once(runtime: Runtime) -> None:
    """Twenty in-app rows taking the same values: one set-based UPDATE, every row won once."""
    nid = new_id()
    users = [f"u{i}" for i in range(20)]
    v1 = rows_of(nid, *[(u, "in_app", SENT) for u in users], ("x", "in_app", SENT))
    await open_rows(runtime, nid, 1, v1, insert={"in_app"})
    v2 = rows_of(nid, *[(u, "in_app", SENT) for u in users])  # "x" is not in this chunk
    won = await open_rows(runtime, nid, 2, v2, insert={"in_app"}, reset={"in_app"})
    assert won == {RowKey(nid, u, "in_app") for u in users}
    rows, _ = await runtime.store.notifications.deliveries(nid, limit=100)
    assert {r["user_id"]: r["version"] for r in rows} == {**{u: 2 for u in users}, "x": 1}


async def test_rows_claimed_at_open_carry_the_claim_and_one_attempt(runtime: Runtime) -> None:
    """Rows inserted and rows taken over are claimed as they are written: ``sending``, with
    the caller's token (only it can record them), one attempt each."""
    ledger, nid = runtime.store.ledger, new_id()
    v1 = rows_of(nid, ("u1", "push", PENDING), ("u1", "in_app", SENT))
    opened = await ledger.open([], [ChunkRows(nid, 1, v1, frozenset({"push", "in_app"}),
                                              frozenset({"in_app"}), {})], Claim("one", 10))
    push = RowKey(nid, "u1", "push")
    assert opened.claimed == {push: 1}
    await ledger.record([(RowState(push, SENT), "not-one")])  # another token changes nothing
    await ledger.record([(RowState(push, SENT), "one")])
    v2 = ChunkRows(nid, 2, v1, frozenset(), frozenset({"push", "in_app"}), {})
    opened = await ledger.open([], [v2], Claim("two", 10))
    assert opened.claimed == {push: 2}
    [row] = await ledger.unfinished(nid, ["u1"])
    assert (row.key, row.status, row.version) == (push, "sending", 2)
    await ledger.record([(RowState(push, SENT), "two")])
    rows, _ = await runtime.store.notifications.deliveries(nid, limit=10)
    assert {(r["channel"], r["status"], r["version"], r["attempts"]) for r in rows} == {
        ("push", "sent", 2, 1), ("in_app", "sent", 2, 0)}


async def test_a_row_released_for_a_retry_counts_its_attempts_when_claimed_again(
        runtime: Runtime) -> None:
    ledger, nid = runtime.store.ledger, new_id()
    chunk = ChunkRows(nid, 1, rows_of(nid, ("u1", "sms", PENDING)), frozenset({"sms"}), frozenset(), {})
    key = RowKey(nid, "u1", "sms")
    assert (await ledger.open([], [chunk], Claim("a", 1))).claimed == {key: 1}
    await ledger.record([(RowState(key, PENDING), "a")])  # released: the provider was busy
    assert (await ledger.open([], [chunk], Claim("b", 1))).claimed == {key: 1}  # redelivered
    rows, _ = await runtime.store.notifications.deliveries(nid, limit=10)
    assert [(r["status"], r["attempts"], r["claim_token"]) for r in rows] == [("sending", 2, "b")]


async def test_rows_past_the_claims_limit_open_pending(runtime: Runtime) -> None:
    """The limit counts inserted and taken-over rows together."""
    ledger, old, new = runtime.store.ledger, new_id(), new_id()
    await open_rows(runtime, old, 1, rows_of(old, ("u1", "push", PENDING), ("u2", "push", PENDING)),
                    insert={"push"})
    opened = await ledger.open([], [
        ChunkRows(old, 2, rows_of(old, ("u1", "push", PENDING), ("u2", "push", PENDING)),
                  frozenset(), frozenset({"push"}), {}),
        ChunkRows(new, 1, rows_of(new, ("u1", "sms", PENDING), ("u2", "sms", PENDING)),
                  frozenset({"sms"}), frozenset(), {})], Claim("tok", 3))
    assert len(opened.claimed) == 3
    statuses = [r.status for nid in (old, new) for r in await ledger.unfinished(nid, ["u1", "u2"])]
    assert sorted(statuses) == ["pending", "sending", "sending", "sending"]


async def test_header_updates_in_one_commit_fold_by_version(runtime: Runtime) -> None:
    """Updates of one id in one commit, new or not: the highest version's state and data, the
    union of the channels, the largest recipient count; an older version only widens."""
    new, old = new_id(), new_id()
    notifications = runtime.store.notifications
    await notifications.upsert(header(old, 1, "installing", recipients=2))
    await notifications.upsert_many([
        header(new, 2, "completed"), header(new, 1, "installing", channels=("email",), recipients=4),
        header(old, 1, "installing", channels=("push",)),
        header(new, 3, "failed", channels=("in_app",))])
    a, b = await notifications.get(new), await notifications.get(old)
    assert (a.version, a.state, a.channels, a.recipients) == (3, "failed", ("in_app", "email"), 4)
    assert (b.version, b.state, b.channels, b.recipients) == (1, "installing", ("in_app", "push"), 2)
    await notifications.upsert_many([HeaderUpdate(
        id=old, service="app", version=2, template="app-install", data={"app_name": "Bar"},
        state="completed", category="app", locale="ko", channels=("sms",), recipients=1)])
    b = await notifications.get(old)
    assert (b.version, b.state, b.data, b.locale, b.channels, b.recipients) == (
        2, "completed", {"app_name": "Bar"}, "ko", ("in_app", "sms", "push"), 2)


async def test_a_header_inserted_meanwhile_by_another_transaction_is_folded_into(
        postgres_url: str) -> None:
    """PostgreSQL: a commit reads a new id's header (none yet), while another transaction has
    inserted it uncommitted; its own insert waits, finds the row, and the update is folded
    into the row as committed."""
    import asyncio

    import sqlalchemy as sa
    from support import until

    from dispatcher.store import Database
    from dispatcher.store.notifications import NotificationStore

    db = Database(postgres_url)
    try:
        await db.create_schema()
        notifications, nid = NotificationStore(db), new_id()
        async with db.write() as first:
            await notifications.upsert_many_in(first, [header(nid, 1, "installing", recipients=3)])
            second = asyncio.create_task(notifications.upsert_many(
                [header(nid, 2, "completed", channels=("email",))]))

            async def waiting_for_the_first() -> bool:
                async with db.read() as conn:
                    return bool((await conn.execute(sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'INSERT INTO notifications%'"))).scalar())
            await until(waiting_for_the_first, "the second insert to wait for the first")
        await asyncio.wait_for(second, 30)
        stored = await notifications.get(nid)
        assert (stored.version, stored.state, stored.channels, stored.recipients) == (
            2, "completed", ("in_app", "email"), 3)
    finally:
        await db.close()
