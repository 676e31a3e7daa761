"""The dead letters: queue messages no worker could process, with why and when.

These commands work on the queue itself, with the processes' settings: the database queue (DISPATCHER_DATABASE_URL) or SQS's dead-letter queue (DISPATCHER_DEAD_LETTER_QUEUE_URL, else the queue's redrive target). `dispatcher dlq` alone is `dispatcher dlq list`.
"""  # noqa: E501  (one line: the help shows each line as it is)

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dispatcher.config import Settings
from dispatcher.queue import DeadLetter, Queue

__all__ = ["LIST_EXAMPLES", "REPLAY_EXAMPLES", "count", "default", "list_letters", "purge", "replay"]

T = TypeVar("T")

LIST_EXAMPLES = """
    dispatcher dlq list
    dispatcher dlq list --limit 20 --json | jq .reason
"""
REPLAY_EXAMPLES = """
    dispatcher dlq replay --id 42 --id 43
    dispatcher dlq replay --all
"""

Limit = Annotated[int, typer.Option(min=1, max=10_000, help="Show at most this many.")]
AsJson = Annotated[bool | None, typer.Option(
    "--json/--table", help="JSON lines, or a table (default: a table on a terminal, JSON lines otherwise).",
    show_default=False)]


def default(ctx: typer.Context, limit: Limit = 100) -> None:
    """The dead letters: list, count, replay (back on the queue) or purge them."""
    if ctx.invoked_subcommand is None:
        list_letters(limit=limit)


def list_letters(limit: Limit = 100, as_json: AsJson = None) -> None:
    """List dead letters, oldest first: id, when, receives, reason, notification."""
    letters = _on_queue(lambda queue: queue.dead_letters(limit))
    if as_json if as_json is not None else not sys.stdout.isatty():
        for letter in letters:
            print(json.dumps({"id": letter.id, "dead_lettered_at": _when(letter.created_at),
                              "reason": letter.reason, "receive_count": letter.receive_count,
                              "body": letter.body}, ensure_ascii=False))
        return
    table = Table(title=f"dead letters ({len(letters)} shown)")
    for column in ("id", "dead-lettered at (UTC)", "receives"):
        table.add_column(column, no_wrap=True)
    for column in ("reason", "notification"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(letter.id, _when(letter.created_at), str(letter.receive_count), letter.reason,
                      _about(letter))
    Console().print(table)


def count() -> None:
    """How many dead letters there are (approximate on SQS)."""
    print(_on_queue(lambda queue: queue.dead_letter_count()))


def replay(
    ids: Annotated[list[str] | None, typer.Option("--id", help="A dead letter's id (repeat for more).",
                                                  show_default=False)] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Put dead letters back on the queue (fix their cause first); says how many went back."""
    if bool(ids) == replay_all:
        raise typer.BadParameter("give --id ID (one or more) or --all", param_hint="--id / --all")
    n = _on_queue(lambda queue: queue.replay(None if replay_all else ids))
    print(f"replayed {n} message{'s' * (n != 1)} onto the queue")
    if ids and n < len(ids):
        print(f"dispatcher: {len(ids) - n} of the ids given are not dead letters", file=sys.stderr)
        raise typer.Exit(1)


def purge(yes: Annotated[bool, typer.Option("--yes", "-y", help="Don't ask.")] = False) -> None:
    """Delete every dead letter (for good)."""
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("purging deletes every dead letter for good: add --yes",
                                     param_hint="--yes")
        typer.confirm("Delete every dead letter for good?", abort=True)
    n = _on_queue(lambda queue: queue.purge_dead_letters())
    print(f"purged {n} dead letter{'s' * (n != 1)}")


def _on_queue(action: Callable[[Queue], Coroutine[Any, Any, T]]) -> T:
    import asyncio

    from dispatcher.runtime import open_queue  # the whole wiring: only for these commands

    async def run() -> T:
        async with open_queue(Settings()) as queue:
            return await action(queue)

    return asyncio.run(run())


def _when(microseconds: int) -> str:
    if microseconds <= 0:
        return "unknown"
    return datetime.fromtimestamp(microseconds / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _about(letter: DeadLetter) -> str:
    """The notification a chunk message was for, where the body says."""
    try:
        body = json.loads(letter.body)
        return f"{body['id']} ({body.get('template')}, {len(body.get('recipients') or [])} recipients)"
    except (ValueError, KeyError, TypeError):
        return letter.body[:60]
