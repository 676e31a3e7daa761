"""``/v1/unsubscribe/{token}``: the target of email ``List-Unsubscribe`` links (no API key:
the signed token is the authority, and it reaches one user's one category only).

Two links change nothing, and say so with a 409 page: one for a critical category
(``DISPATCHER_CRITICAL_CATEGORIES`` always send, so none is minted; a forged-by-us or
pre-policy one has no effect), and one issued before the user's record last changed while
the category's email is now explicitly on: the user chose that after the link was sent, and
replaying an old email must not undo it. The store keeps one ``updated_at`` per user, not per
category, so a link older than any later change to a user who has that category on is
refused too (the page points to the next email's link); that errs towards keeping a
choice the user made.
"""

import html
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from dispatcher.api.errors import ApiError
from dispatcher.errors import InvalidLink
from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime
from dispatcher.unsubscribe import Link, UnsubscribeLinks

__all__ = ["router"]

Token = Annotated[str, Path(max_length=2048)]


def router(runtime: Runtime, links: UnsubscribeLinks) -> APIRouter:
    api = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])
    critical = runtime.settings.critical_categories

    async def refusal(link: Link) -> HTMLResponse | None:
        """The 409 page when following ``link`` must change nothing; else None."""
        what = html.escape(link.category)
        if link.category in critical:
            return _page("Nothing to unsubscribe", f"Emails about <b>{what}</b> are always sent "
                         "(they concern your account's safety); this link has no effect.", 409)
        user = await runtime.store.users.get(link.user_id)
        switched_on = user is not None and (
            user.preferences.categories.get(link.category, {}).get("email") is True)
        if user is not None and switched_on and link.issued_us < user.updated_at:
            return _page("Link out of date", f"Your email settings changed after this link was "
                         f"sent, and emails about <b>{what}</b> are switched on, so it has no "
                         "effect. To stop them, use the link in a newer email.", 409)
        return None

    @api.get("/{token}", response_class=HTMLResponse)
    async def confirm(token: Token) -> HTMLResponse:
        link = _verify(links, token)
        return await refusal(link) or _page(
            "Unsubscribe", f"Stop emails about <b>{html.escape(link.category)}</b>?"
            '<form method=post><input type=hidden name="List-Unsubscribe" value="One-Click">'
            "<button>Unsubscribe</button></form>")

    @api.post("/{token}", response_class=HTMLResponse)
    async def unsubscribe(token: Token) -> HTMLResponse:
        link = _verify(links, token)
        refused = await refusal(link)
        if refused is not None:
            return refused
        await runtime.store.users.merge_preferences(
            link.user_id, Preferences(categories={link.category: {"email": False}}))
        return _page("Unsubscribed", "You will no longer get emails about "
                                     f"<b>{html.escape(link.category)}</b>.")

    return api


def _verify(links: UnsubscribeLinks, token: str) -> Link:
    try:
        return links.read(token)
    except InvalidLink as exc:
        raise ApiError(404, str(exc), "invalid_link") from None


def _page(title: str, body_html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{title}</title><p>{body_html}</p>",
                        status)
