"""Notification templates: load them once, render them per channel and locale (and recipient).

Layout on disk, one folder per template::

    templates/<name>/template.json          optional: {"description", "category", "example"}
    templates/<name>/default/<part files>   required
    templates/<name>/<locale>/<part files>  e.g. ko/, en-US/; may hold only some parts
    templates/_layouts/<files>              shared layouts and partials (any folder starting with _)

Part files per channel (see ``CHANNEL_PARTS``)::

    in_app  in_app.title.txt  in_app.body.txt
    email   email.subject.txt email.html  email.txt
    sms     sms.txt
    push    push.title.txt    push.body.txt

A template has a channel when ``default/`` holds every part file of that channel. Each part falls back on its own
along the locale chain ``ko-KR -> ko -> default`` (folder names match case-insensitively, ``_`` counts as ``-``).

Parts are Jinja2 in a sandbox with ``StrictUndefined``; ``.html`` parts and layouts are autoescaped. A part may
``{% extends "_layouts/email.html" %}`` or ``{% include "_layouts/footer.html" %}``: the files of every folder
whose name starts with ``_`` are read into memory and compiled when the registry is built, so rendering never
touches the filesystem (only ``.html``, ``.htm``, ``.txt``, ``.j2``, ``.jinja``, ``.jinja2`` files are read; an
image beside them is left alone). A part naming a layout that does not exist fails at load.

What a part uses is read from its parsed AST (its undeclared variables, those of the layouts it names included)
when it is loaded: :attr:`Part.variables`. A part that uses neither ``user`` nor a per-recipient data key renders
the same for every recipient of a locale; the planner renders the others per recipient
(:mod:`dispatcher.planning`).

A :class:`TemplateSet` is one immutable load of the directory. :class:`TemplateRegistry` holds the current set
and swaps it on :meth:`TemplateRegistry.reload` (SIGHUP, :mod:`dispatcher.template_reload`); callers that need
one consistent view across many renders take :meth:`TemplateRegistry.current` once.

Errors (from ``dispatcher.errors``):

    TemplateError         a part that fails to load, compile or render (names template, locale folder and part file)
      PartError           the same, with the file and line it came from (``path``, ``line``)
    UnknownTemplate       no template of that name (a LookupError)
    ChannelNotInTemplate  a requested channel the template has no parts for
"""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from dispatcher.errors import ChannelNotInTemplate, TemplateError, UnknownTemplate
from dispatcher.render_budget import BoundedSandbox, RenderBudget, render_within

__all__ = [
    "CHANNEL_PARTS",
    "DEFAULT_LOCALE",
    "PART_FILES",
    "Part",
    "PartError",
    "TemplateError",
    "TemplateInfo",
    "TemplateRegistry",
    "TemplateSet",
    "UnknownTemplate",
    "locale_chain",
    "part_file",
]

CHANNEL_PARTS: dict[str, tuple[str, ...]] = {
    "in_app": ("title", "body"),
    "email": ("subject", "html", "text"),
    "sms": ("text",),
    "push": ("title", "body"),
}

DEFAULT_LOCALE = "default"
_METADATA_FILE = "template.json"
#: A layout or partial larger than this is refused at load (parts are bounded by what authors write; layouts
#: are read whole into memory).
_MAX_LAYOUT_BYTES = 1024 * 1024
#: The files of a ``_`` folder that are layouts or partials (others, such as images, are left alone).
_LAYOUT_SUFFIXES = frozenset({".html", ".htm", ".txt", ".j2", ".jinja", ".jinja2"})


class PartError(TemplateError):
    """A :class:`TemplateError` that knows the file (and line, when there is one) it came from."""

    def __init__(self, message: str, path: Path, line: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        #: What went wrong without where (the path and line say that).
        self.detail = detail or message


@dataclass(frozen=True)
class TemplateInfo:
    """What a template offers, as shown to template authors and checked by the gateway."""

    name: str
    channels: frozenset[str]
    locales: tuple[str, ...]
    category: str | None
    description: str
    #: ``template.json``'s ``example``: ``{"data": {…}, "user": {…}, "state": "…"}`` (used by the check).
    example: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Part:
    """One compiled part file, where it came from (for error messages) and what it uses."""

    template_name: str
    locale: str
    file: str
    path: Path
    compiled: jinja2.Template
    budget: RenderBudget
    #: Every variable the part (and the layouts it names) reads from the context; None when it names a layout
    #: only known at render time, so it may use anything.
    variables: frozenset[str] | None
    #: The templates root, to name layout files in errors.
    root: Path

    @property
    def personal(self) -> bool:
        """Whether it uses ``user`` (so renders per recipient)."""
        return self.variables is None or "user" in self.variables

    def uses_any(self, names: Iterable[str]) -> bool:
        return self.variables is None or not self.variables.isdisjoint(names)

    def render(self, context: Mapping[str, object]) -> str:
        try:
            return render_within(self.compiled, context, self.budget).strip()
        except Exception as exc:
            # Part code evaluates author-written expressions over caller-supplied data, so anything it raises
            # (undefined variable, sandbox violation, a filter's TypeError, 1/0, ...) is this template's fault:
            # one clear error for this notification, never a crashed worker.
            path, line = _template_line(exc, self.path, self.root)
            what = _error_detail(exc, None)
            detail = _error_detail(exc, line)
            if path != self.path and line is not None:
                detail = f"{_relative(path, self.root)} line {line}: {what}"
            raise PartError(_describe(self, detail), path, line, what) from exc


@dataclass(frozen=True)
class _Template:
    info: TemplateInfo
    # normalised locale key -> part file name -> compiled part
    parts: Mapping[str, Mapping[str, Part]]


def part_file(channel: str, part: str) -> str:
    if part == "html":
        return f"{channel}.html"
    if part == "text":
        return f"{channel}.txt"
    return f"{channel}.{part}.txt"


PART_FILES = frozenset(part_file(c, p) for c, parts in CHANNEL_PARTS.items() for p in parts)


def _locale_key(locale: str) -> str:
    return locale.strip().replace("_", "-").lower()


def locale_chain(locale: str | None) -> list[str]:
    """``ko-KR`` -> ``["ko-kr", "ko", "default"]``: drop subtags from the right, then the default."""
    chain: list[str] = []
    subtags = _locale_key(locale).split("-") if locale else []
    while subtags and subtags[0]:
        chain.append("-".join(subtags))
        subtags.pop()
    chain.append(DEFAULT_LOCALE)
    return chain


def _describe(part: Part, detail: str) -> str:
    return f"template {part.template_name!r}, locale {part.locale!r}, part file {part.file!r}: {detail}"


def _error_detail(exc: Exception, line: int | None) -> str:
    message = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
    return message if line is None else f"line {line}: {message}"


def _template_line(exc: BaseException, path: Path, root: Path) -> tuple[Path, int | None]:
    """The template file and line an error came from: Jinja rewrites tracebacks to point into the template
    files. The deepest frame in the part file or a layout wins (an error inside an included partial names it)."""
    found: tuple[Path, int | None] = (path, None)
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.filename:
        return Path(exc.filename), exc.lineno
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == str(path) or _is_layout(name, root):
            found = (Path(name), tb.tb_lineno)
        tb = tb.tb_next
    return found


def _is_layout(filename: str, root: Path) -> bool:
    try:
        return Path(filename).relative_to(root).parts[0].startswith("_")
    except (ValueError, IndexError):
        return False


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class _Layouts(jinja2.BaseLoader):
    """The layout and partial files, read into memory once: ``{% extends "_layouts/email.html" %}``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: dict[str, tuple[str, Path]] = {}
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or not folder.name.startswith("_"):
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in _LAYOUT_SUFFIXES:
                    self.sources[path.relative_to(root).as_posix()] = (_read_layout(path), path)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        try:
            source, path = self.sources[template]
        except KeyError:
            raise jinja2.TemplateNotFound(template) from None
        return source, str(path), lambda: True


def _read_layout(path: Path) -> str:
    try:
        if path.stat().st_size > _MAX_LAYOUT_BYTES:
            raise PartError(f"layout {str(path)!r} is over {_MAX_LAYOUT_BYTES:,} bytes", path)
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PartError(f"layout {str(path)!r}: cannot read: {exc}", path) from exc


def _environment(budget: RenderBudget, loader: jinja2.BaseLoader) -> BoundedSandbox:
    return BoundedSandbox(
        budget,
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=-1,  # every layout stays compiled: no eviction, no recompilation at render time
    )


class TemplateSet:
    """Every template under one directory, scanned and compiled once at construction (immutable after).

    Raises ``TemplateError`` at construction for a part or layout that does not compile, a part naming a layout
    that does not exist, unreadable metadata, or a template folder without ``default/``. Files that are not part
    files are ignored (``dispatcher templates check`` reports them), and so are folders whose name starts with
    ``.``; folders starting with ``_`` hold layouts.
    """

    def __init__(self, directory: Path, budget: RenderBudget | None = None, *,
                 problems: list[TemplateError] | None = None) -> None:
        """``problems``: collect every load error there instead of raising the first, leaving out what failed
        (the broken part, or the whole template when its folder or metadata is at fault): the check's mode."""
        self.directory = Path(directory)
        self.budget = budget or RenderBudget()
        self._problems = problems
        if not self.directory.is_dir():
            raise TemplateError(f"templates directory {str(self.directory)!r} does not exist")
        self._layouts = _Layouts(self.directory)
        self._env = _environment(self.budget, self._layouts)
        self._variables: dict[str, frozenset[str] | None] = {}
        for name, (_, path) in self._layouts.sources.items():
            try:
                self._env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                self._fail(PartError(f"layout {str(path)!r}: line {exc.lineno}: {exc.message}", path, exc.lineno,
                                     f"syntax error: {exc.message}"))
        self._templates: dict[str, _Template] = {}
        for folder in sorted(self.directory.iterdir()):
            if folder.is_dir() and not folder.name.startswith((".", "_")):
                try:
                    self._templates[folder.name] = self._load_template(folder)
                except TemplateError as exc:
                    self._fail(exc)

    def _fail(self, error: TemplateError) -> None:
        if self._problems is None:
            raise error
        self._problems.append(error)

    def names(self) -> list[str]:
        return sorted(self._templates)

    def info(self, name: str) -> TemplateInfo:
        return self._get(name).info

    def layouts(self) -> dict[str, Path]:
        """Layout and partial names (as a part names them) and their files."""
        return {name: path for name, (_, path) in self._layouts.sources.items()}

    def locale_parts(self, name: str) -> Mapping[str, Mapping[str, Part]]:
        """Every compiled part of a template by locale folder key, then part file name."""
        return self._get(name).parts

    def resolve(self, name: str, channel: str, locale: str | None) -> dict[str, Part]:
        """The parts of one channel for ``locale``, each found along the locale chain.

        Raises ``UnknownTemplate``, ``ChannelNotInTemplate``."""
        template = self._get(name)
        if channel not in template.info.channels:
            have = ", ".join(sorted(template.info.channels)) or "none"
            raise ChannelNotInTemplate(f"template {name!r} has no channel {channel} (it has: {have})")
        chain = locale_chain(locale)
        return {part: _resolve(template, chain, part_file(channel, part)) for part in CHANNEL_PARTS[channel]}

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
        return {
            channel: {part: p.render(context) for part, p in self.resolve(name, channel, locale).items()}
            for channel in wanted
        }

    def _get(self, name: str) -> _Template:
        try:
            return self._templates[name]
        except KeyError:
            raise UnknownTemplate(name) from None

    def _load_template(self, folder: Path) -> _Template:
        if not (folder / DEFAULT_LOCALE).is_dir():
            raise TemplateError(f"template {folder.name!r} has no {DEFAULT_LOCALE}/ folder in {str(folder)!r}")
        locale_dirs = _locale_dirs(folder)
        parts = {key: self._load_locale(folder.name, path) for key, path in locale_dirs.items()}
        category, description, example = _read_metadata(folder)
        default_files = parts[DEFAULT_LOCALE].keys()
        info = TemplateInfo(
            name=folder.name,
            channels=frozenset(
                channel
                for channel, names in CHANNEL_PARTS.items()
                if all(part_file(channel, part) in default_files for part in names)
            ),
            locales=tuple(path.name for path in locale_dirs.values()),
            category=category,
            description=description,
            example=example,
        )
        return _Template(info=info, parts=parts)

    def _load_locale(self, template_name: str, folder: Path) -> dict[str, Part]:
        parts = {}
        for path in sorted(folder.iterdir()):
            if path.name in PART_FILES and path.is_file():
                try:
                    parts[path.name] = self._compile(template_name, folder.name, path)
                except TemplateError as exc:
                    self._fail(exc)
        return parts

    def _compile(self, template_name: str, locale: str, path: Path) -> Part:
        # Parts are compiled here from their source, once. The name picks autoescape (.html only); the filename
        # makes Jinja's tracebacks point into the part file.
        name = f"{template_name}/{locale}/{path.name}"
        try:
            source = path.read_text(encoding="utf-8")
            tree = self._env.parse(source, name=name, filename=str(path))
            code = self._env.compile(source, name=name, filename=str(path))
        except jinja2.TemplateSyntaxError as exc:
            raise PartError(f"{_where(template_name, locale, path)}: line {exc.lineno}: {exc.message}",
                            path, exc.lineno, f"syntax error: {exc.message}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise PartError(f"{_where(template_name, locale, path)}: cannot read: {exc}", path) from exc
        variables = self._uses(tree, f"{_where(template_name, locale, path)}", path)
        compiled = self._env.template_class.from_code(self._env, code, self._env.make_globals(None))
        return Part(template_name, locale, path.name, path, compiled, self.budget, variables, self.directory)

    def _uses(self, tree: jinja2.nodes.Template, where: str, path: Path) -> frozenset[str] | None:
        """The undeclared variables of ``tree`` and of every layout it names (recursively)."""
        names = set(meta.find_undeclared_variables(tree))
        for ref in meta.find_referenced_templates(tree):
            if ref is None:
                return None  # a layout named by an expression: it may use anything
            if ref not in self._layouts.sources:
                known = ", ".join(sorted(self._layouts.sources)) or "none"
                missing = f"names the layout {ref!r}, which does not exist (layouts: {known})"
                raise PartError(f"{where}: {missing}", path, _line_of(tree, ref), missing)
            if ref not in self._variables:
                self._variables[ref] = frozenset()  # a cycle stops here (Jinja refuses it at render)
                source, layout_path = self._layouts.sources[ref]
                try:
                    layout = self._env.parse(source, ref, str(layout_path))
                except jinja2.TemplateSyntaxError as exc:
                    raise PartError(f"{where}: its layout {ref!r} does not compile: line {exc.lineno}: "
                                    f"{exc.message}", layout_path, exc.lineno,
                                    f"syntax error: {exc.message}") from exc
                self._variables[ref] = self._uses(layout, f"layout {ref!r}", layout_path)
            used = self._variables[ref]
            if used is None:
                return None
            names |= used
        return frozenset(names)


def _line_of(tree: jinja2.nodes.Template, ref: str) -> int | None:
    for node in tree.find_all((jinja2.nodes.Extends, jinja2.nodes.Include, jinja2.nodes.Import,
                               jinja2.nodes.FromImport)):
        target = getattr(node, "template", None)
        if isinstance(target, jinja2.nodes.Const) and target.value == ref:
            return node.lineno
    return None


class TemplateRegistry:
    """The current :class:`TemplateSet` of a directory; :meth:`reload` swaps in a new one.

    Reads (``names``, ``info``, ``render``) go to the set current at the call; a chunk takes
    :meth:`current` once so that all of its renders see one set.
    """

    def __init__(self, directory: Path, budget: RenderBudget | None = None) -> None:
        self._directory = Path(directory)
        self._budget = budget or RenderBudget()
        self._current = TemplateSet(self._directory, self._budget)
        self._reloading = threading.Lock()

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def budget(self) -> RenderBudget:
        return self._budget

    def current(self) -> TemplateSet:
        return self._current

    def reload(self) -> TemplateSet:
        """Load the directory again and check it (``dispatcher templates check``); swap it in only when it
        loads and the check finds nothing. Raises ``TemplateError`` saying why, keeping the previous set."""
        from dispatcher.template_check import check_set

        with self._reloading:
            candidate = TemplateSet(self._directory, self._budget)
            problems = check_set(candidate)
            if problems:
                listed = "\n".join(f"  {p}" for p in problems[:50])
                more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
                raise TemplateError(f"{len(problems)} problem(s) in {str(self._directory)!r} "
                                    f"(see dispatcher templates check):\n{listed}{more}")
            self._current = candidate
            return candidate

    def names(self) -> list[str]:
        return self._current.names()

    def info(self, name: str) -> TemplateInfo:
        return self._current.info(name)

    def render(
        self,
        name: str,
        channels: Iterable[str],
        context: Mapping[str, object],
        locale: str | None = None,
    ) -> dict[str, dict[str, str]]:
        return self._current.render(name, channels, context, locale)


def _where(template_name: str, locale: str, path: Path) -> str:
    return f"template {template_name!r}, locale {locale!r}, part file {path.name!r} ({str(path)!r})"


def _resolve(template: _Template, chain: list[str], file: str) -> Part:
    """The first locale in the chain that holds this part file; ``default`` always does for a channel it has."""
    for key in chain:
        part = template.parts.get(key, {}).get(file)
        if part is not None:
            return part
    raise AssertionError(f"{file} missing from default/ of {template.info.name!r}")  # channels were checked


def _locale_dirs(folder: Path) -> dict[str, Path]:
    """Locale folders by normalised key, ``default`` first; two folders naming the same locale is an error."""
    found: dict[str, Path] = {DEFAULT_LOCALE: folder / DEFAULT_LOCALE}
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or path.name.startswith((".", "_")) or path.name == DEFAULT_LOCALE:
            continue
        key = _locale_key(path.name)
        if key in found:
            raise TemplateError(
                f"template {folder.name!r}: locale folders {found[key].name!r} and {path.name!r} are the same locale"
            )
        found[key] = path
    return found


def _read_metadata(folder: Path) -> tuple[str | None, str, dict[str, Any]]:
    """``(category, description, example)`` from ``template.json``, if present."""
    path = folder / _METADATA_FILE
    if not path.is_file():
        return None, "", {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        raise PartError(f"template {folder.name!r}: cannot read {str(path)!r}: {exc}", path, line) from exc
    category = metadata.get("category") if isinstance(metadata, dict) else None
    description = metadata.get("description", "") if isinstance(metadata, dict) else None
    example = metadata.get("example", {}) if isinstance(metadata, dict) else None
    if not isinstance(category, str | None) or not isinstance(description, str):
        raise PartError(
            f"template {folder.name!r}: {str(path)!r} must be an object with string 'category' and 'description'",
            path,
        )
    if not _valid_example(example):
        raise PartError(
            f"template {folder.name!r}: {str(path)!r}: 'example' must be an object with an object 'data', an object "
            "'user' and a string 'state' (each optional)", path)
    assert isinstance(example, dict)
    return category, description, example


def _valid_example(example: Any) -> bool:
    return (isinstance(example, dict)
            and isinstance(example.get("data", {}), dict)
            and isinstance(example.get("user", {}), dict)
            and isinstance(example.get("state"), str | None))
