"""``/v1/unsubscribe/{token}``: the target of email ``List-Unsubscribe`` links (no API key:
the signed token is the authority, and it reaches one user's one category only).

``POST`` is RFC 8058's one-click (what mail clients send); ``GET`` shows a page that asks
first (mail scanners follow links on their own), in the user's language (their stored locale,
else the browser's), naming the category by its title, with a link to the user's preference
centre. A link that is not valid gets a page saying so (404), never JSON: a person follows it.

Two links change nothing, and say so with a 409 page: one for a critical category
(``DISPATCHER_CRITICAL_CATEGORIES`` always send, so none is minted; a forged-by-us or
pre-policy one has no effect), and one issued before the user's record last changed while
the category's email is now explicitly on: the user chose that after the link was sent, and
replaying an old email must not undo it. The store keeps one ``updated_at`` per user, not per
category, so a link older than any later change to a user who has that category on is
refused too (the page points to the next email's link); that errs towards keeping a
choice the user made.

Unsubscribe links do not expire: they can only switch one category's email off, and the law
of most places wants them honoured long after the email was sent (CAN-SPAM: 30 days at
least). The preference-centre link on their page, which can switch things on, is offered only
while the unsubscribe link is younger than ``DISPATCHER_PREFERENCE_LINK_LIFETIME``.
"""

import time
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import HTMLResponse

from dispatcher.errors import InvalidLink
from dispatcher.model import UserRecord
from dispatcher.pages.catalog import negotiate
from dispatcher.pages.render import Pages
from dispatcher.pages.routes import preference_links
from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime
from dispatcher.unsubscribe import Link, UnsubscribeLinks

__all__ = ["router"]

Token = Annotated[str, Path(max_length=2048)]
Lang = Annotated[str | None, Query(max_length=35, include_in_schema=False)]
AcceptLanguage = Annotated[str | None, Header(max_length=1024, include_in_schema=False)]


def router(runtime: Runtime, links: UnsubscribeLinks, pages: Pages) -> APIRouter:
    api = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])
    critical = runtime.settings.critical_categories
    centre = preference_links(runtime)

    def refusal(link: Link, user: UserRecord | None) -> str | None:
        """The message of the 409 page when following ``link`` must change nothing; else None."""
        if link.category in critical:
            return "unsub.critical"
        switched_on = user is not None and (
            user.preferences.categories.get(link.category, {}).get("email") is True)
        if user is not None and switched_on and link.issued_us < user.updated_at:
            return "unsub.stale"
        return None

    def page(request: Request, link: Link, user: UserRecord | None, lang: str, outcome: str,
             status: int = 200) -> HTMLResponse:
        heading = {"confirm": "unsub.title", "done": "unsub.done_title", "unsub.critical":
                   "unsub.critical_title", "unsub.stale": "unsub.stale_title"}[outcome]
        return pages.page("unsubscribe.html", lang, status, heading=heading, outcome=outcome,
                          title=pages.title(link.category, lang),
                          preference_url=centre_url(request, link))

    def centre_url(request: Request, link: Link) -> str | None:
        age = time.time() - link.issued_us / 1e6
        if age > centre.lifetime or not runtime.settings.user_token_secret:
            return None
        token, _ = centre.mint(link.user_id)
        return f"{(runtime.settings.public_url or str(request.base_url)).rstrip('/')}/p/{token}"

    async def opened(token: str, lang: str | None, accept: str | None,
                     ) -> tuple[Link, UserRecord | None, str] | HTMLResponse:
        try:
            link = links.read(token)
        except InvalidLink:
            return pages.error(negotiate(lang, accept_language=accept), "invalid", 404)
        user = await runtime.store.users.get(link.user_id)
        return link, user, negotiate(lang, user.locale if user else None, accept_language=accept)

    async def answer(token: str, request: Request, lang: str | None, accept: str | None, *,
                     unsubscribe: bool) -> HTMLResponse:
        """The page for a link: refused (409), the confirmation (GET) or done (POST)."""
        found = await opened(token, lang, accept)
        if isinstance(found, HTMLResponse):
            return found
        link, user, chosen = found
        refused = refusal(link, user)
        if refused is not None:
            return page(request, link, user, chosen, refused, 409)
        if not unsubscribe:
            return page(request, link, user, chosen, "confirm")
        await runtime.store.users.merge_preferences(
            link.user_id, Preferences(categories={link.category: {"email": False}}))
        return page(request, link, user, chosen, "done")

    @api.get("/{token}", response_class=HTMLResponse)
    async def unsubscribe_page(token: Token, request: Request, lang: Lang = None,
                               accept_language: AcceptLanguage = None) -> HTMLResponse:
        return await answer(token, request, lang, accept_language, unsubscribe=False)

    @api.post("/{token}", response_class=HTMLResponse)
    async def unsubscribe(token: Token, request: Request, lang: Lang = None,
                          accept_language: AcceptLanguage = None) -> HTMLResponse:
        return await answer(token, request, lang, accept_language, unsubscribe=True)

    return api
