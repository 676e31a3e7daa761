"""``/v1/unsubscribe/{token}``: the target of email ``List-Unsubscribe`` links (no API key:
the signed token is the authority, and it reaches one user's one category only)."""

import html
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime
from dispatcher.unsubscribe import UnsubscribeLinks

__all__ = ["router"]

Token = Annotated[str, Path(max_length=2048)]


def router(runtime: Runtime, links: UnsubscribeLinks) -> APIRouter:
    api = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])

    @api.get("/{token}", response_class=HTMLResponse)
    async def confirm(token: Token) -> HTMLResponse:
        _, category = links.verify(token)  # InvalidLink: 404
        return HTMLResponse(
            "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
            f"<p>Stop emails about <b>{html.escape(category)}</b>?</p>"
            '<form method=post><input type=hidden name="List-Unsubscribe" value="One-Click">'
            "<button>Unsubscribe</button></form>")

    @api.post("/{token}", response_class=HTMLResponse)
    async def unsubscribe(token: Token) -> HTMLResponse:
        user_id, category = links.verify(token)
        await runtime.store.users.merge_preferences(
            user_id, Preferences(categories={category: {"email": False}}))
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>Unsubscribed</title>"
                            f"<p>You will no longer get emails about <b>{html.escape(category)}</b>.</p>")

    return api
