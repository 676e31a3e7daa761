"""Webhooks the receivers never took: list them, or send them again with their ids.

These commands work on the store (DISPATCHER_DATABASE_URL); the worker processes send what is replayed.
"""  # noqa: E501  (one line: the help shows each line as it is)

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer

from dispatcher.config import Settings
from dispatcher.store import Database, Store

__all__ = ["FAILED_EXAMPLES", "REPLAY_EXAMPLES", "failed", "replay"]

T = TypeVar("T")

FAILED_EXAMPLES = """
    dispatcher webhooks failed --service app
    dispatcher webhooks failed --service app --limit 20 | jq .last_error
"""
REPLAY_EXAMPLES = """
    dispatcher webhooks replay --service app
    dispatcher webhooks replay --id msg_3f1c…
    dispatcher webhooks replay --all
"""


def failed(service: Annotated[str, typer.Option(help="The service whose webhooks to list.")],
           limit: Annotated[int, typer.Option(min=1, max=10_000, help="Show at most this many.")] = 100,
           ) -> None:
    """List a service's failed webhooks, newest first, as JSON lines."""
    entries = _on_store(lambda store: store.webhooks.entries(service, status="failed", limit=limit))
    for entry in entries:
        print(json.dumps({"id": entry.id, "event": entry.event, "attempts": entry.attempts,
                          "last_error": entry.last_error, "payload": json.loads(entry.payload)},
                         ensure_ascii=False))


def replay(
    service: Annotated[str | None, typer.Option(help="Only this service's failed webhooks.")] = None,
    webhook_id: Annotated[str | None, typer.Option("--id", help="Only this webhook.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every failed webhook of every service.")] = False,
) -> None:
    """Make failed webhooks due again (same ids); says how many."""
    if not (service or webhook_id or replay_all):
        raise typer.BadParameter("give --service, --id or --all", param_hint="--service / --id / --all")
    n = _on_store(lambda store: store.webhooks.replay(service, webhook_id))
    print(json.dumps({"replayed": n}))


def _on_store(action: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        settings = Settings()
        db = Database(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        try:
            await db.create_schema()
            return await action(Store.from_database(db))
        finally:
            await db.close()

    return asyncio.run(run())
