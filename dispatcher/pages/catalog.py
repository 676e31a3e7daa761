"""What the pages say, in the reader's language: the UI's messages and the categories' titles.

Messages live in ``messages/<lang>.json`` next to this module (``en`` and ``ko``); a key missing
from a language falls back to English. Category titles and descriptions live in the templates
folder's ``categories.json`` (written by the same people who write the templates)::

    {"app": {"title": {"en": "App installs", "ko": "앱 설치"}, "description": {"en": "..."}}}

A category without an entry is shown by its name, humanised (``app-updates`` -> "App updates").

The reader's language is the first of: the page's ``?lang=``, the user's stored locale, the
browser's ``Accept-Language``, English; each matched by its primary subtag (``ko-KR`` -> ko).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dispatcher.errors import ConfigurationError

__all__ = ["LANGUAGES", "Categories", "CategoryText", "Messages", "negotiate", "ordered"]

LANGUAGES = ("en", "ko")
_DEFAULT = "en"
_CATEGORIES_FILE = "categories.json"
_MAX_CATEGORIES_BYTES = 1024 * 1024


def negotiate(*candidates: str | None, accept_language: str | None = None) -> str:
    """The first supported language among ``candidates`` (locales, most wanted first), then
    ``accept_language`` (by its q-values), else English."""
    for candidate in (*candidates, *_accepted(accept_language or "")):
        lang = _primary(candidate)
        if lang in LANGUAGES:
            return lang
    return _DEFAULT


def _primary(locale: str | None) -> str:
    return (locale or "").strip().replace("_", "-").split("-")[0].lower()


def _accepted(header: str) -> list[str]:
    """``"ko-KR,ko;q=0.9,en;q=0.8"`` -> ``["ko-KR", "ko", "en"]`` (bounded: a header is short)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header[:1024].split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


class Messages:
    """The pages' UI strings, per language (read once from the package data)."""

    def __init__(self) -> None:
        folder = resources.files("dispatcher.pages") / "messages"
        self._by_lang: dict[str, dict[str, str]] = {
            lang: json.loads((folder / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGUAGES}

    def get(self, lang: str, key: str, **values: Any) -> str:
        text = self._by_lang.get(lang, {}).get(key) or self._by_lang[_DEFAULT].get(key, key)
        return text.format(**values) if values else text

    def for_language(self, lang: str) -> dict[str, str]:
        """Every message in ``lang`` (English where it has none), for a page's script."""
        return {**self._by_lang[_DEFAULT], **self._by_lang.get(lang, {})}


@dataclass(frozen=True)
class CategoryText:
    title: str
    description: str


class Categories:
    """Titles and descriptions of categories, localised, from ``categories.json``."""

    def __init__(self, entries: Mapping[str, Mapping[str, Mapping[str, str]]]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, templates_dir: Path) -> Categories:
        """From ``<templates_dir>/categories.json``; none when the file is absent. Raises
        :class:`ConfigurationError` for a file that is not of the documented shape."""
        path = Path(templates_dir) / _CATEGORIES_FILE
        if not path.is_file():
            return cls({})
        try:
            raw = json.loads(path.read_bytes()[:_MAX_CATEGORIES_BYTES].decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read {str(path)!r}: {exc}") from exc
        return cls(_checked(raw, path))

    def declared(self) -> list[str]:
        """The categories the file names, in its order."""
        return list(self._entries)

    def text(self, category: str, lang: str) -> CategoryText:
        entry = self._entries.get(category, {})
        title = _localised(entry.get("title", {}), lang) or _humanised(category)
        return CategoryText(title, _localised(entry.get("description", {}), lang))


def _checked(raw: Any, path: Path) -> dict[str, dict[str, dict[str, str]]]:
    problem = f"{str(path)!r} must map each category to {{\"title\": {{lang: text}}, \"description\": {{lang: text}}}}"
    if not isinstance(raw, dict):
        raise ConfigurationError(problem)
    for entry in raw.values():
        if not isinstance(entry, dict) or not all(
                isinstance(entry.get(field, {}), dict)
                and all(isinstance(v, str) for v in entry.get(field, {}).values())
                for field in ("title", "description")):
            raise ConfigurationError(problem)
    return raw


def _localised(texts: Mapping[str, str], lang: str) -> str:
    for key in (lang, _DEFAULT, *texts):
        if texts.get(key):
            return texts[key]
    return ""


def _humanised(category: str) -> str:
    words = category.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:] if words else category


def ordered(first: Iterable[str], *more: Iterable[str]) -> list[str]:
    """``first`` in its order, then the rest sorted, each once."""
    head = list(dict.fromkeys(first))
    rest = sorted({c for group in more for c in group} - set(head))
    return head + rest
