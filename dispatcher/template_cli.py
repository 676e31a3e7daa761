"""``dispatcher templates check | preview``: the template author's commands.

* ``check [--dir DIR]``: load and render every template as the server would
  (:mod:`dispatcher.template_check`); one line per problem, ``file:line: message``; exit
  status 0 only when there is none (1 when there are, 2 when the folder can't be read).
* ``preview NAME [--locale L] [--state S] [--data JSON|@file] [--user JSON|@file]
  [--channel C …] [--dir DIR] [--json]``: print every channel's rendered parts and the
  locale folder each came from. ``data``, ``user`` and ``state`` default to the example of
  the template's ``template.json``.

``DIR`` defaults to ``DISPATCHER_TEMPLATES_DIR`` (the shipped templates when unset). This
module has its own parser so that any front end (today's argparse ``dispatcher`` command)
can hand it the rest of the command line: ``main(argv)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dispatcher.errors import ChannelNotInTemplate, TemplateError, UnknownTemplate
from dispatcher.render_budget import RenderBudget
from dispatcher.rendering import TemplateSet
from dispatcher.template_check import EXAMPLE_UNSUBSCRIBE_URL
from dispatcher.template_check import check as check_templates
from dispatcher.template_preview import preview as render_preview

__all__ = ["check", "main", "preview"]

#: A ``--data``/``--user`` value (or the file it names) larger than this is refused.
_MAX_ARGUMENT_BYTES = 1024 * 1024


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.action == "check":
        return check(args.dir)
    try:
        data = _json_argument(args.data, "--data")
        user = _json_argument(args.user, "--user")
    except ValueError as exc:
        print(f"dispatcher templates preview: {exc}", file=sys.stderr)
        return 2
    return preview(args.name, directory=args.dir, locale=args.locale, state=args.state, data=data,
                   user=user, channels=args.channel, as_json=args.json)


def check(directory: Path | None = None) -> int:
    folder, budget = _where(directory)
    try:
        problems = check_templates(folder, budget)
    except TemplateError as exc:
        print(f"dispatcher templates check: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {folder}", file=sys.stderr)
        return 1
    print(f"templates in {folder}: no problems", file=sys.stderr)
    return 0


def preview(name: str, *, directory: Path | None = None, locale: str | None = None,
            state: str | None = None, data: dict[str, Any] | None = None,
            user: dict[str, Any] | None = None, channels: list[str] | None = None,
            as_json: bool = False) -> int:
    folder, budget = _where(directory)
    try:
        templates = TemplateSet(folder, budget)
        example = templates.info(name).example
        result = render_preview(
            templates, name, channels,
            data=example.get("data", {}) if data is None else data,
            user=example.get("user") if user is None else user,
            state=example.get("state") if state is None else state,
            locale=locale, unsubscribe_url=EXAMPLE_UNSUBSCRIBE_URL)
    except (TemplateError, UnknownTemplate, ChannelNotInTemplate) as exc:
        print(f"dispatcher templates preview: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
        return 0
    print(f"template {name}, locale {result.locale or '(none: default)'}")
    for channel, parts in result.channels.items():
        print(f"\n== {channel}")
        for part, text in parts.items():
            print(f"-- {part} (from {result.variants[channel][part]}/)")
            print(text)
    return 0


def _where(directory: Path | None) -> tuple[Path, RenderBudget]:
    from dispatcher.config import Settings

    try:
        settings = Settings()
    except ValidationError:
        from dispatcher.templates_path import shipped_templates

        return directory or shipped_templates(), RenderBudget()
    return directory or settings.templates_dir, RenderBudget(settings.render_timeout,
                                                             settings.render_max_chars)


def _json_argument(value: str | None, flag: str) -> dict[str, Any] | None:
    """``--data '{"a": 1}'`` or ``--data @file.json``: a JSON object."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            if path.stat().st_size > _MAX_ARGUMENT_BYTES:
                raise ValueError(f"{flag}: {path} is over {_MAX_ARGUMENT_BYTES:,} bytes")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{flag}: cannot read {path}: {exc}") from None
    if len(text.encode()) > _MAX_ARGUMENT_BYTES:
        raise ValueError(f"{flag}: over {_MAX_ARGUMENT_BYTES:,} bytes")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{flag}: must be a JSON object")
    return parsed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher templates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    check_cmd = actions.add_parser("check", help="report every problem of a templates folder")
    check_cmd.add_argument("--dir", type=Path, help="templates folder (DISPATCHER_TEMPLATES_DIR)")
    show = actions.add_parser("preview", help="print a template's rendered parts")
    show.add_argument("name")
    show.add_argument("--dir", type=Path, help="templates folder (DISPATCHER_TEMPLATES_DIR)")
    show.add_argument("--locale", help="e.g. ko-KR (default: the user's, else default/)")
    show.add_argument("--state", help="the notification's state (default: the example's)")
    show.add_argument("--data", help="JSON object or @file (default: the example's)")
    show.add_argument("--user", help="JSON object {id, name, locale, attributes} or @file "
                                     "(default: the example's)")
    show.add_argument("--channel", action="append", help="only this channel (repeatable)")
    show.add_argument("--json", action="store_true", help="print JSON")
    return parser
