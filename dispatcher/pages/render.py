"""Server-rendered pages: Jinja2 templates from this package, sent with headers that keep
them to this server alone.

Every page is self-contained: its CSS and scripts come from ``/pages/…`` on this server (no
CDN, no web fonts: the system font stack), so it works with no internet access. The Content
Security Policy says so to the browser too (``'self'`` only, no inline script), and a page
can't be framed (a preference switch must not be clickjacked). ``Referrer-Policy:
no-referrer`` keeps a link's token out of any request the page makes; ``no-store`` keeps a
user's page out of shared caches.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup, escape

from dispatcher.pages.catalog import Categories, Messages

__all__ = ["ASSETS", "PAGE_HEADERS", "Pages"]

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

#: Files served at ``/pages/<name>``: where they are in this package, and their media type.
ASSETS = {
    "pages.css": ("static/pages.css", "text/css; charset=utf-8"),
    "inbox.js": ("static/inbox.js", "text/javascript; charset=utf-8"),
    "preferences.js": ("static/preferences.js", "text/javascript; charset=utf-8"),
    "messages/en.json": ("messages/en.json", "application/json"),
    "messages/ko.json": ("messages/ko.json", "application/json"),
}

class Pages:
    """Renders the page templates in a language, with the categories' titles."""

    def __init__(self, categories: Categories) -> None:
        self.categories = categories
        self.messages = Messages()
        self._env = jinja2.Environment(loader=jinja2.PackageLoader("dispatcher.pages", "templates"),
                                       autoescape=True, undefined=jinja2.StrictUndefined,
                                       trim_blocks=True, lstrip_blocks=True)
        package = resources.files("dispatcher.pages")
        self._assets = {name: package.joinpath(path).read_bytes() for name, (path, _) in ASSETS.items()}

    def page(self, template: str, lang: str, status: int = 200, **context: Any) -> HTMLResponse:
        def t(key: str, **values: Any) -> Markup:
            # The message is escaped; values that are Markup (a <strong> title) stay markup.
            return Markup(escape(self.messages.get(lang, key))).format(**values) if values else \
                escape(self.messages.get(lang, key))

        html = self._env.get_template(template).render(
            lang=lang, t=t, strong=_strong, title_of=lambda c: self.title(c, lang),
            description_of=lambda c: self.categories.text(c, lang).description, **context)
        return HTMLResponse(html, status, headers=PAGE_HEADERS)

    def error(self, lang: str, kind: str, status: int) -> HTMLResponse:
        """The friendly page for a link that is ``invalid`` or ``expired``, or ``not_found``."""
        return self.page("error.html", lang, status, kind=kind)

    def title(self, category: str, lang: str) -> str:
        if category == "default":
            return self.messages.get(lang, "category.default")
        return self.categories.text(category, lang).title

    def asset(self, name: str) -> Response:
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff",
                   # Public, credential-free files: an app's page on another origin may load them
                   # (the embeddable inbox reads its messages with fetch()).
                   "Access-Control-Allow-Origin": "*"}
        return Response(self._assets[name], media_type=ASSETS[name][1], headers=headers)


def _strong(text: str) -> Markup:
    return Markup("<strong>{}</strong>").format(text)


def utc_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")
