"""Notification templates: load them once, render them per channel and locale.

Layout on disk, one folder per template::

    templates/<name>/template.json          optional: {"description": "...", "category": "..."}
    templates/<name>/default/<part files>   required
    templates/<name>/<locale>/<part files>  e.g. ko/, en-US/; may hold only some parts

Part files per channel (see ``CHANNEL_PARTS``)::

    in_app  in_app.title.txt  in_app.body.txt
    email   email.subject.txt email.html  email.txt
    sms     sms.txt
    push    push.title.txt    push.body.txt

A template has a channel when ``default/`` holds every part file of that channel. Each part falls back on its own
along the locale chain ``ko-KR -> ko -> default`` (folder names match case-insensitively, ``_`` counts as ``-``).

Parts are Jinja2 in a sandbox with ``StrictUndefined``; only ``.html`` parts are autoescaped. Every part is compiled
once when the registry is built, so rendering never touches the filesystem. Parts are self-contained: there is no
loader, so ``{% include %}`` and ``{% extends %}`` fail at render time.

Errors (from ``dispatcher.errors``):

    TemplateError         a part that fails to load, compile or render (names template, locale folder and part file)
    UnknownTemplate       no template of that name (a LookupError)
    ChannelNotInTemplate  a requested channel the template has no parts for
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from dispatcher.errors import ChannelNotInTemplate, TemplateError, UnknownTemplate
from dispatcher.render_budget import BoundedSandbox, RenderBudget, render_within

__all__ = [
    "CHANNEL_PARTS",
    "TemplateError",
    "TemplateInfo",
    "TemplateRegistry",
    "UnknownTemplate",
]

CHANNEL_PARTS: dict[str, tuple[str, ...]] = {
    "in_app": ("title", "body"),
    "email": ("subject", "html", "text"),
    "sms": ("text",),
    "push": ("title", "body"),
}

_DEFAULT_LOCALE = "default"
_METADATA_FILE = "template.json"


@dataclass(frozen=True)
class TemplateInfo:
    """What a template offers, as shown to template authors and checked by the gateway."""

    name: str
    channels: frozenset[str]
    locales: tuple[str, ...]
    category: str | None
    description: str


@dataclass(frozen=True)
class _Part:
    """One compiled part file and where it came from (for error messages)."""

    template_name: str
    locale: str
    file: str
    path: Path
    compiled: jinja2.Template
    budget: RenderBudget

    def render(self, context: Mapping[str, object]) -> str:
        try:
            return render_within(self.compiled, context, self.budget).strip()
        except Exception as exc:
            # Part code evaluates author-written expressions over caller-supplied data, so anything it raises
            # (undefined variable, sandbox violation, a filter's TypeError, 1/0, ...) is this template's fault:
            # one clear error for this notification, never a crashed worker.
            line = _template_line(exc, self.path)
            raise TemplateError(_describe(self, _error_detail(exc, line))) from exc


@dataclass(frozen=True)
class _Template:
    info: TemplateInfo
    # normalised locale key -> part file name -> compiled part
    parts: Mapping[str, Mapping[str, _Part]]


def _part_file(channel: str, part: str) -> str:
    if part == "html":
        return f"{channel}.html"
    if part == "text":
        return f"{channel}.txt"
    return f"{channel}.{part}.txt"


_PART_FILES = frozenset(_part_file(c, p) for c, parts in CHANNEL_PARTS.items() for p in parts)


def _locale_key(locale: str) -> str:
    return locale.strip().replace("_", "-").lower()


def _locale_chain(locale: str | None) -> list[str]:
    """``ko-KR`` -> ``["ko-kr", "ko", "default"]``: drop subtags from the right, then the default."""
    chain: list[str] = []
    subtags = _locale_key(locale).split("-") if locale else []
    while subtags and subtags[0]:
        chain.append("-".join(subtags))
        subtags.pop()
    chain.append(_DEFAULT_LOCALE)
    return chain


def _describe(part: _Part, detail: str) -> str:
    return f"template {part.template_name!r}, locale {part.locale!r}, part file {part.file!r}: {detail}"


def _error_detail(exc: Exception, line: int | None) -> str:
    message = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
    return message if line is None else f"line {line}: {message}"


def _template_line(exc: BaseException, path: Path) -> int | None:
    """The template line an error came from: Jinja rewrites tracebacks to point into the template file."""
    line = None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _environment(budget: RenderBudget) -> BoundedSandbox:
    return BoundedSandbox(
        budget,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )


class TemplateRegistry:
    """Every template under one directory, scanned and compiled once at construction.

    Raises ``TemplateError`` at construction for a part that does not compile, unreadable metadata, or a
    template folder without ``default/``. Files that are not part files are ignored, and so are folders whose
    name starts with ``.`` or ``_``.
    """

    def __init__(self, directory: Path, budget: RenderBudget | None = None) -> None:
        self._directory = Path(directory)
        self._budget = budget or RenderBudget()
        self._env = _environment(self._budget)
        if not self._directory.is_dir():
            raise TemplateError(f"templates directory {str(self._directory)!r} does not exist")
        self._templates: dict[str, _Template] = {
            folder.name: self._load_template(folder)
            for folder in sorted(self._directory.iterdir())
            if folder.is_dir() and not folder.name.startswith((".", "_"))
        }

    def names(self) -> list[str]:
        return sorted(self._templates)

    def info(self, name: str) -> TemplateInfo:
        return self._get(name).info

    def render(
        self,
        name: str,
        channels: Iterable[str],
        context: Mapping[str, object],
        locale: str | None = None,
    ) -> dict[str, dict[str, str]]:
        """Render the requested channels' parts: ``{channel: {part: text}}``.

        Raises ``UnknownTemplate``, ``ChannelNotInTemplate``, ``TemplateError``.
        """
        template = self._get(name)
        wanted = list(dict.fromkeys(channels))
        missing = [channel for channel in wanted if channel not in template.info.channels]
        if missing:
            have = ", ".join(sorted(template.info.channels)) or "none"
            raise ChannelNotInTemplate(f"template {name!r} has no channel {', '.join(missing)} (it has: {have})")
        chain = _locale_chain(locale)
        return {
            channel: {
                part: _resolve(template, chain, _part_file(channel, part)).render(context)
                for part in CHANNEL_PARTS[channel]
            }
            for channel in wanted
        }

    def _get(self, name: str) -> _Template:
        try:
            return self._templates[name]
        except KeyError:
            raise UnknownTemplate(name) from None

    def _load_template(self, folder: Path) -> _Template:
        if not (folder / _DEFAULT_LOCALE).is_dir():
            raise TemplateError(f"template {folder.name!r} has no {_DEFAULT_LOCALE}/ folder in {str(folder)!r}")
        locale_dirs = _locale_dirs(folder)
        parts = {key: self._load_locale(folder.name, path) for key, path in locale_dirs.items()}
        category, description = _read_metadata(folder)
        default_files = parts[_DEFAULT_LOCALE].keys()
        info = TemplateInfo(
            name=folder.name,
            channels=frozenset(
                channel
                for channel, names in CHANNEL_PARTS.items()
                if all(_part_file(channel, part) in default_files for part in names)
            ),
            locales=tuple(path.name for path in locale_dirs.values()),
            category=category,
            description=description,
        )
        return _Template(info=info, parts=parts)

    def _load_locale(self, template_name: str, folder: Path) -> dict[str, _Part]:
        return {
            path.name: self._compile(template_name, folder.name, path)
            for path in sorted(folder.iterdir())
            if path.name in _PART_FILES and path.is_file()
        }

    def _compile(self, template_name: str, locale: str, path: Path) -> _Part:
        # No loader: parts are compiled here from their source, once. The name picks autoescape (.html only);
        # the filename makes Jinja's tracebacks point into the part file.
        name = f"{template_name}/{locale}/{path.name}"
        try:
            source = path.read_text(encoding="utf-8")
            code = self._env.compile(source, name=name, filename=str(path))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{_where(template_name, locale, path)}: line {exc.lineno}: {exc.message}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{_where(template_name, locale, path)}: cannot read: {exc}") from exc
        compiled = self._env.template_class.from_code(self._env, code, self._env.make_globals(None))
        return _Part(template_name, locale, path.name, path, compiled, self._budget)


def _where(template_name: str, locale: str, path: Path) -> str:
    return f"template {template_name!r}, locale {locale!r}, part file {path.name!r} ({str(path)!r})"


def _resolve(template: _Template, chain: list[str], file: str) -> _Part:
    """The first locale in the chain that holds this part file; ``default`` always does for a channel it has."""
    for key in chain:
        part = template.parts.get(key, {}).get(file)
        if part is not None:
            return part
    raise AssertionError(f"{file} missing from default/ of {template.info.name!r}")  # channels were checked


def _locale_dirs(folder: Path) -> dict[str, Path]:
    """Locale folders by normalised key, ``default`` first; two folders naming the same locale is an error."""
    found: dict[str, Path] = {_DEFAULT_LOCALE: folder / _DEFAULT_LOCALE}
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or path.name.startswith((".", "_")) or path.name == _DEFAULT_LOCALE:
            continue
        key = _locale_key(path.name)
        if key in found:
            raise TemplateError(
                f"template {folder.name!r}: locale folders {found[key].name!r} and {path.name!r} are the same locale"
            )
        found[key] = path
    return found


def _read_metadata(folder: Path) -> tuple[str | None, str]:
    """``(category, description)`` from ``template.json``, if present."""
    path = folder / _METADATA_FILE
    if not path.is_file():
        return None, ""
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TemplateError(f"template {folder.name!r}: cannot read {str(path)!r}: {exc}") from exc
    category = metadata.get("category") if isinstance(metadata, dict) else None
    description = metadata.get("description", "") if isinstance(metadata, dict) else None
    if not isinstance(category, str | None) or not isinstance(description, str):
        raise TemplateError(
            f"template {folder.name!r}: {str(path)!r} must be an object with string 'category' and 'description'"
        )
    return category, description
