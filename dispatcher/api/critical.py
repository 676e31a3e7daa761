"""Who may send a critical category: only the services in ``DISPATCHER_CRITICAL_SERVICES``.

A category in ``DISPATCHER_CRITICAL_CATEGORIES`` bypasses every opt-out, so letting any
service send one would let it reach users who switched it off. The category a notification
gets is its own ``category``, else its template's default (``template.json``), as the
workers decide it; both are checked here, at the gateway, before anything is queued.
"""

from __future__ import annotations

from dispatcher.api.errors import ApiError
from dispatcher.rendering import TemplateRegistry, UnknownTemplate

__all__ = ["CriticalSenders"]


class CriticalSenders:
    def __init__(self, categories: frozenset[str], services: frozenset[str],
                 templates: TemplateRegistry) -> None:
        self._categories = categories
        self._services = services
        self._templates = templates

    def check(self, service: str, template: str, category: str | None) -> None:
        """Raise a 403 ``forbidden_category`` when ``service`` may not send this category."""
        effective = category or self._default_category(template)
        if effective in self._categories and service not in self._services:
            raise ApiError(403, f"category {effective!r} is critical (it bypasses opt-outs); only "
                                "the services in DISPATCHER_CRITICAL_SERVICES may send it",
                           "forbidden_category")

    def _default_category(self, template: str) -> str:
        try:
            return self._templates.info(template).category or "default"
        except UnknownTemplate:
            return "default"  # the fan-out answers 422 for the template itself
