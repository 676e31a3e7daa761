"""A template rendered for one made-up notification and recipient: the HTTP preview
(``POST /v1/templates/{name}/preview``) and ``dispatcher templates preview``.

A preview renders what a recipient would get (before the per-channel length limits) and says
which locale folder each part came from, since parts fall back one by one
(``ko-KR -> ko -> default``). The locale is the one asked for, else the user's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.rendering import TemplateSet

__all__ = ["Preview", "preview"]


@dataclass(frozen=True)
class Preview:
    template: str
    locale: str | None
    #: channel -> part -> rendered text
    channels: dict[str, dict[str, str]]
    #: channel -> part -> the locale folder it came from (``default``, ``ko``, …)
    variants: dict[str, dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "locale": self.locale, "channels": self.channels,
                "variants": self.variants}


def preview(templates: TemplateSet, name: str, channels: Iterable[str] | None, *,
            data: Mapping[str, Any], user: Mapping[str, Any] | None, state: str | None,
            locale: str | None, unsubscribe_url: str | None = None,
            notification_id: str = "preview") -> Preview:
    """Raises ``UnknownTemplate``, ``ChannelNotInTemplate``, ``TemplateError``."""
    info = templates.info(name)
    user = dict(user or {})
    locale = locale or user.get("locale")
    context = {**data, "state": state, "category": info.category or "default",
               "notification_id": notification_id, "locale": locale,
               "unsubscribe_url": unsubscribe_url,
               "user": {"id": user.get("id", "preview-user"), "name": user.get("name"),
                        "locale": user.get("locale"), "timezone": user.get("timezone"),
                        "attributes": dict(user.get("attributes") or {})}}
    rendered: dict[str, dict[str, str]] = {}
    variants: dict[str, dict[str, str]] = {}
    for channel in list(dict.fromkeys(channels)) if channels else sorted(info.channels):
        parts = templates.resolve(name, channel, locale)
        rendered[channel] = {part_name: part.render(context) for part_name, part in parts.items()}
        variants[channel] = {part_name: part.locale for part_name, part in parts.items()}
    return Preview(name, locale, rendered, variants)
