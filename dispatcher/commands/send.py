"""``dispatcher send``: make the id, send a notification through the API, optionally follow it.

Recipients come from ``--to u1,u2`` or ``--csv FILE`` (a column ``user_id``, ``recipient`` or
``id`` when the first row names one, else the first column; at most 1,000,000 rows). They are
de-duplicated, in order, and sent as notifications of at most 10,000 recipients each (the
API's bound), each with its own id ``<service>#<uuid4>``. The service is ``--service`` /
``DISPATCHER_SERVICE``, else the service of ``DISPATCHER_API_KEY`` in ``DISPATCHER_API_KEYS``
when that is set here too (the server's ``.env``). The ids are printed on stdout, one a line.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dispatcher.client import ApiRefused, Client, new_id
from dispatcher.commands import progress
from dispatcher.commands.api import ApiKey, Url, client_settings, open_client
from dispatcher.messages import MAX_RECIPIENTS

__all__ = ["EXAMPLES", "read_csv", "send", "split"]

MAX_CSV_RECIPIENTS = 1_000_000
MAX_DATA_FILE_BYTES = 1024 * 1024
RECIPIENT_COLUMNS = ("user_id", "recipient", "id")

EXAMPLES = """
    dispatcher send -t app-install --to u1,u2 --data '{"app_name": "Foo"}' --state installing
    dispatcher send -t app-install --csv users.csv --data @data.json --channels in_app,push --wait
    dispatcher send -t app-install --to u1 --id 'app#<uuid>' --version 2 --state completed --data @data.json
"""


def send(
    template: Annotated[str, typer.Option("--template", "-t", help="Template name.", show_default=False)],
    to: Annotated[str | None, typer.Option(help="Comma-separated user ids.", show_default=False)] = None,
    csv_file: Annotated[Path | None, typer.Option(
        "--csv", exists=True, dir_okay=False, readable=True, show_default=False,
        help="CSV of recipients: a user_id (or recipient, id) column, else the first column.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Template data: a JSON object, or @file holding one.", show_default=False)] = None,
    channels: Annotated[str | None, typer.Option(
        help="Comma-separated channels (default: every channel the template has).",
        show_default=False)] = None,
    state: Annotated[str | None, typer.Option(help="The notification's state.", show_default=False)] = None,
    category: Annotated[str | None, typer.Option(help="Category (preferences).", show_default=False)] = None,
    locale: Annotated[str | None, typer.Option(help="Locale, e.g. ko-KR.", show_default=False)] = None,
    notification_id: Annotated[str | None, typer.Option(
        "--id", help="The id, to update a notification sent before (default: a new one).",
        show_default=False)] = None,
    version: Annotated[int, typer.Option(min=1, help="Version (higher updates the notification).")] = 1,
    send_at: Annotated[str | None, typer.Option(
        help="Deliver later: an ISO 8601 time with its offset, e.g. 2026-12-01T09:00:00+09:00.",
        show_default=False)] = None,
    service: Annotated[str | None, typer.Option(
        help="Your service, the first part of the id (DISPATCHER_SERVICE; default: the service "
             "of the API key in DISPATCHER_API_KEYS, when set here).", show_default=False)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the delivery: a progress bar per channel until no row is pending, "
                       "then a summary; exit status 1 if any row failed.")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="--wait: give up after this many seconds "
                                                       "(exit status 3).")] = 3600,
    url: Url = None, api_key: ApiKey = None,
) -> None:
    """Send a notification (several, over 10,000 recipients) through the API."""
    recipients = _recipients(to, csv_file)
    body = {"template": template, "data": _data(data), "version": version,
            **_optional(channels=_names(channels), state=state, category=category, locale=locale,
                        send_at=send_at)}
    settings = client_settings(url, api_key, service=service)
    parts = split(recipients)
    if notification_id and len(parts) > 1:
        raise typer.BadParameter(f"{len(recipients)} recipients make {len(parts)} notifications: "
                                 "--id names only one", param_hint="--id")
    owner = notification_id.partition("#")[0] if notification_id else settings.service_name()
    if not owner:
        raise typer.BadParameter("which service are you? Give --service (or set DISPATCHER_SERVICE)",
                                 param_hint="--service")
    with open_client(settings) as client:
        ids = _post_all(client, body, parts, owner, notification_id)
        if wait:
            raise typer.Exit(_follow(client, ids, timeout))


def split(recipients: list[str], size: int = MAX_RECIPIENTS) -> list[list[str]]:
    """Notifications of at most ``size`` recipients each."""
    return [recipients[i:i + size] for i in range(0, len(recipients), size)]


def read_csv(path: Path, limit: int = MAX_CSV_RECIPIENTS) -> list[str]:
    """The recipient column of ``path``: see the module's docstring."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        rows = csv.reader(file)
        first = next(rows, None)
        if first is None:
            return []
        names = [cell.strip().lower() for cell in first]
        header = next((names.index(n) for n in RECIPIENT_COLUMNS if n in names), None)
        column = header or 0
        found = [first[0].strip()] if header is None and first and first[0].strip() else []
        for line, row in enumerate(rows, start=2):
            if len(row) > column and row[column].strip():
                found.append(row[column].strip())
            if len(found) > limit:
                raise typer.BadParameter(f"{path} has more than {limit:,} recipients (line {line})",
                                         param_hint="--csv")
    return found


def _recipients(to: str | None, csv_file: Path | None) -> list[str]:
    if (to is None) == (csv_file is None):
        raise typer.BadParameter("give either --to u1,u2 or --csv FILE", param_hint="--to / --csv")
    found = read_csv(csv_file) if csv_file is not None else _names(to) or []
    unique = list(dict.fromkeys(found))
    if not unique:
        raise typer.BadParameter("no recipients", param_hint="--to / --csv")
    too_long = next((r for r in unique if len(r) > 255), None)
    if too_long is not None:
        raise typer.BadParameter(f"recipient {too_long[:40]!r}… is longer than 255 characters")
    if len(unique) < len(found):
        print(f"dispatcher: {len(found) - len(unique)} duplicate recipients dropped", file=sys.stderr)
    return unique


def _data(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            if path.stat().st_size > MAX_DATA_FILE_BYTES:
                raise typer.BadParameter(f"{path} is over {MAX_DATA_FILE_BYTES} bytes", param_hint="--data")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"can't read {path}: {exc.strerror}", param_hint="--data") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object ({...})", param_hint="--data")
    return value


def _names(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _optional(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _post_all(client: Client, body: dict[str, Any], parts: list[list[str]], service: str,
              notification_id: str | None) -> list[str]:
    ids: list[str] = []
    for part in parts:
        request = {**body, "id": notification_id or new_id(service), "recipients": part}
        try:
            answer = client.send(request)
        except ApiRefused:
            if ids:
                print(f"dispatcher: sent {len(ids)} of {len(parts)} notifications before this one "
                      f"was refused: {', '.join(ids)}", file=sys.stderr)
            raise
        ids.append(answer["id"])
        print(answer["id"], flush=True)
    accepted = sum(len(p) for p in parts)
    print(f"dispatcher: sent {len(ids)} notification{'s' * (len(ids) > 1)} to {accepted:,} recipients",
          file=sys.stderr)
    return ids


def _follow(client: Client, ids: list[str], timeout: float) -> int:
    """Follow ``ids``, print the summary; the exit status (0, 1 rows failed, 3 timed out)."""
    counts, done = progress.follow(client, ids, timeout=timeout)
    out = Console()
    for table in progress.summary(counts, progress.failure_reasons(client, ids)
                                  if progress.failed(counts) else None):
        out.print(table)
    if not done:
        print(f"dispatcher: rows still pending after {timeout:g} s", file=sys.stderr)
        return 3
    return 1 if progress.failed(counts) else 0
