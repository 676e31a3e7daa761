"""``dispatcher templates check``: find a templates folder's mistakes before users do.

Loads every template as the server does (:class:`~dispatcher.rendering.TemplateSet`), then
renders every part file of every locale folder with the ``example`` of its ``template.json``
(``{"data": {…}, "user": {…}, "state": "…"}``), and reports, each with its file and, where
there is one, its line:

* syntax errors (parts and layouts), layouts that do not exist, unreadable ``template.json``;
* undefined variables (every one in a part, not only the first) and any other render error;
* unknown part files (``emial.html``, with the nearest known name);
* a channel with some of its parts missing from ``default/`` (so the template lacks it);
* a locale folder missing a part file ``default/`` has (that part would fall back to
  ``default/``, another language), and part files of a channel ``default/`` lacks (never used);
* an SMS text over 1,600 characters and an email subject over 998 (both are cut at send time).

The same check guards a reload (:meth:`~dispatcher.rendering.TemplateRegistry.reload`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from dispatcher.errors import TemplateError
from dispatcher.part_limits import PART_LIMITS
from dispatcher.render_budget import RenderBudget
from dispatcher.rendering import (
    CHANNEL_PARTS,
    DEFAULT_LOCALE,
    PART_FILES,
    Part,
    PartError,
    TemplateInfo,
    TemplateSet,
    part_file,
)

__all__ = ["EXAMPLE_UNSUBSCRIBE_URL", "Problem", "check", "check_set", "example_context"]

EXAMPLE_UNSUBSCRIBE_URL = "https://example.invalid/v1/unsubscribe/example-token"
_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")
_MAX_UNDEFINED_PER_PART = 20
#: Parts whose rendered length the check holds to the channel's limit (the others are cut
#: silently too, but these are the ones a provider counts against the sender).
_CHECKED_LENGTHS = {("sms", "text"): "SMS text", ("email", "subject"): "email subject"}


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = _shown(self.path)
        return f"{where}:{self.line}: {self.message}" if self.line else f"{where}: {self.message}"


def check(directory: Path, budget: RenderBudget | None = None) -> list[Problem]:
    """Every problem of the templates under ``directory``; raises TemplateError only when the
    directory itself is missing."""
    errors: list[TemplateError] = []
    templates = TemplateSet(directory, budget, problems=errors)
    problems = [_from_error(e, Path(directory)) for e in errors]
    return _unique(problems + check_set(templates))


def check_set(templates: TemplateSet) -> list[Problem]:
    """The problems of a set that loaded: the folders' structure and the example renders."""
    problems = _structure(templates.directory)
    for name in templates.names():
        problems += _renders(templates, templates.info(name))
    return _unique(problems)


def example_context(info: TemplateInfo, locale: str | None, *, data: Mapping[str, Any] | None = None,
                    user: Mapping[str, Any] | None = None, state: str | None = None,
                    notification_id: str = "example") -> dict[str, Any]:
    """What a template sees in the check and in previews: ``data`` and ``user`` (default: the
    example's), and the fields every render has."""
    example = info.example
    data = example.get("data", {}) if data is None else data
    user = example.get("user", {}) if user is None else user
    return {**data, "state": example.get("state") if state is None else state,
            "category": info.category or "default", "notification_id": notification_id,
            "locale": locale, "unsubscribe_url": EXAMPLE_UNSUBSCRIBE_URL,
            "user": {"id": user.get("id", "example-user"), "name": user.get("name"),
                     "locale": user.get("locale", locale), "timezone": user.get("timezone"),
                     "attributes": dict(user.get("attributes") or {})}}


def _renders(templates: TemplateSet, info: TemplateInfo) -> list[Problem]:
    problems: list[Problem] = []
    for locale, parts in templates.locale_parts(info.name).items():
        folder_locale = None if locale == DEFAULT_LOCALE else locale
        for file, part in parts.items():
            text = _render(part, example_context(info, folder_locale), problems)
            if text is None:
                continue
            for (channel, name), what in _CHECKED_LENGTHS.items():
                limit = PART_LIMITS[channel][name]
                if file == part_file(channel, name) and len(text) > limit:
                    problems.append(Problem(part.path, None, f"the {what} renders to {len(text):,} characters with "
                                                             f"the example; the limit is {limit:,} (it would be cut)"))
    return problems


def _render(part: Part, context: dict[str, Any], problems: list[Problem]) -> str | None:
    """The part rendered with ``context``; each undefined variable is reported and then given a
    stand-in value, so that one render finds them all."""
    context = dict(context)
    for _ in range(_MAX_UNDEFINED_PER_PART):
        try:
            return part.render(context)
        except PartError as exc:
            hint = ""
            missing = _UNDEFINED.match(str(exc.__cause__)) if isinstance(exc.__cause__, jinja2.UndefinedError) else None
            if missing or isinstance(exc.__cause__, jinja2.UndefinedError):
                hint = " (give it a value in the \"example\" of template.json)"
            problems.append(Problem(exc.path, exc.line, f"{exc.detail}{hint}"))
            if not missing:
                return None
            context[missing.group(1)] = ""
    return None


def _structure(directory: Path) -> list[Problem]:
    problems: list[Problem] = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        default = folder / DEFAULT_LOCALE
        if not default.is_dir():
            continue  # the load reports it
        default_files = _part_files(default, problems)
        for channel, names in CHANNEL_PARTS.items():
            files = [part_file(channel, n) for n in names]
            have = [f for f in files if f in default_files]
            if have and len(have) < len(files):
                lacking = [f for f in files if f not in default_files]
                problems.append(Problem(default, None, f"channel {channel} is incomplete: {DEFAULT_LOCALE}/ has "
                                                       f"{', '.join(have)} but not {', '.join(lacking)}, so "
                                                       f"template {folder.name!r} has no {channel} channel"))
        for locale in sorted(p for p in folder.iterdir()
                             if p.is_dir() and p.name != DEFAULT_LOCALE and not p.name.startswith((".", "_"))):
            locale_files = _part_files(locale, problems)
            for missing in sorted(default_files - locale_files):
                problems.append(Problem(locale, None, f"locale {locale.name} has no {missing}, which "
                                                      f"{DEFAULT_LOCALE}/ has (it falls back to {DEFAULT_LOCALE}/)"))
            for extra in sorted(locale_files - default_files):
                problems.append(Problem(locale / extra, None, f"{DEFAULT_LOCALE}/ has no {extra}, so this file "
                                                              "is never used"))
    return problems


def _part_files(folder: Path, problems: list[Problem]) -> set[str]:
    """The part files in a locale folder; other files are reported as unknown part files."""
    found = set()
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            problems.append(Problem(path, None, "a folder inside a locale folder is never used"))
        elif path.name in PART_FILES:
            found.add(path.name)
        else:
            near = difflib.get_close_matches(path.name, sorted(PART_FILES), n=1, cutoff=0.6)
            guess = f" (did you mean {near[0]}?)" if near else ""
            problems.append(Problem(path, None, f"unknown part file {path.name!r}{guess}; part files are "
                                                f"{', '.join(sorted(PART_FILES))}"))
    return found


def _from_error(error: TemplateError, directory: Path) -> Problem:
    if isinstance(error, PartError):
        return Problem(error.path, error.line, error.detail)
    return Problem(directory, None, str(error))


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Path, int | None, str]] = set()
    out = []
    for p in problems:
        key = (p.path, p.line, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
