"""``dispatcher status ID``: a notification's header and its counts per channel, once or live."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dispatcher.commands import progress
from dispatcher.commands.api import ApiKey, Url, client_settings, open_client

__all__ = ["EXAMPLES", "status"]

EXAMPLES = """
    dispatcher status 'app#3f1c0000-0000-4000-8000-000000000000'
    dispatcher status "$ID" --watch
    dispatcher status "$ID" --json | jq .counts
"""

HEADER = ("id", "template", "state", "version", "category", "locale", "channels", "recipients",
          "created_at", "updated_at")


def status(
    notification_id: Annotated[str, typer.Argument(metavar="ID", help="The notification id (<service>#<uuid>).",
                                                   show_default=False)],
    watch: Annotated[bool, typer.Option(
        "--watch", help="Follow it live until no row is pending; exit status 1 if any row failed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="--watch: give up after this many seconds "
                                                       "(exit status 3).")] = 3600,
    url: Url = None, api_key: ApiKey = None,
) -> None:
    """Show a notification: state, version, and its rows per channel (pending, sent, failed, skipped)."""
    with open_client(client_settings(url, api_key)) as client:
        answer = client.notification(notification_id)
        out = Console()
        if as_json:
            print(json.dumps(answer, indent=2, ensure_ascii=False))
            return
        out.print(_header(answer))
        counts = progress.tally([answer])
        done = progress.settled(counts)
        if watch and not done:
            counts, done = progress.follow(client, [notification_id], timeout=timeout)
        for table in progress.summary(counts, progress.failure_reasons(client, [notification_id])
                                      if progress.failed(counts) else None):
            out.print(table)
        if watch:
            raise typer.Exit(3 if not done else 1 if progress.failed(counts) else 0)


def _header(answer: dict[str, object]) -> Table:
    table = Table(show_header=False, box=None)
    for name in HEADER:
        value = answer.get(name)
        table.add_row(name, ", ".join(map(str, value)) if isinstance(value, list) else
                      "" if value is None else str(value))
    return table
