"""The people's pages: the preference centre (``/p/{token}``), the inbox (``/inbox``) and
their files (``/pages/…``); and ``POST /v1/users/{id}/preference-link``, which mints the
centre's links.

A preference link is a :class:`~dispatcher.api.auth.ScopedTokens` token of purpose
``preferences``: it binds one user (the page never reads another), it expires
(``DISPATCHER_PREFERENCE_LINK_LIFETIME``, 7 days by default), and it is accepted by the
centre's own routes only. With it one can read and change that user's switches, nothing else:
no API endpoint takes it, so it cannot send, read the feed or mint anything.

The inbox page holds no user data: it is the ``<dispatcher-inbox>`` component (``inbox.js``,
which apps can also embed in their own pages), reading the user token from the page's
``#token=`` fragment (never sent to a server, and removed from the address bar at once).
"""

from typing import Annotated, Any, NamedTuple
from urllib.parse import parse_qsl

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.api.auth import Authenticator, Caller, ScopedTokenError, ScopedTokens
from dispatcher.api.errors import ApiError, error_responses
from dispatcher.api.schemas import PreferenceLinkOut
from dispatcher.api.timefmt import iso
from dispatcher.model import UserRecord
from dispatcher.pages.catalog import Categories, negotiate, ordered
from dispatcher.pages.centre import CHANNELS, changed_switches, grid, parse_switch_values
from dispatcher.pages.render import ASSETS, Pages, utc_text
from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime

__all__ = ["PreferenceLinkIn", "SwitchIn", "build_pages", "preference_links", "router"]

#: A page's token: checked by hand (an overlong one is a bad link, and gets the friendly page).
PageToken = Annotated[str, Path()]
Token = Annotated[str, Path(max_length=2048)]
MAX_TOKEN_CHARS = 2048
Lang = Annotated[str | None, Query(max_length=35, include_in_schema=False)]
AcceptLanguage = Annotated[str | None, Header(max_length=1024, include_in_schema=False)]
#: Most categories the centre shows (declared ones first), and most switches a form may carry.
MAX_CATEGORIES = 200
MAX_FORM_SWITCHES = len(CHANNELS) * MAX_CATEGORIES


class PreferenceLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: int | None = Field(default=None, ge=60, description=(
        "Seconds the link works; at most (and by default) DISPATCHER_PREFERENCE_LINK_LIFETIME"))


class SwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str = Field(min_length=1, max_length=64)
    channel: str = Field(pattern="^(" + "|".join(CHANNELS) + ")$")
    enabled: bool


class _Opened(NamedTuple):
    """A verified preference link: whose, their record (if any), the page's language, expiry."""

    user_id: str
    user: UserRecord | None
    lang: str
    expires: int

    def preferences(self) -> Preferences:
        return self.user.preferences if self.user else Preferences()


class _LinkRefused(Exception):
    """A preference link that is not valid (404) or has expired (410), in a language."""

    def __init__(self, lang: str, expired: bool) -> None:
        self.lang = lang
        self.expired = expired

    def page(self, pages: Pages) -> HTMLResponse:
        return pages.error(self.lang, "expired" if self.expired else "invalid", 410 if self.expired else 404)


def preference_links(runtime: Runtime) -> ScopedTokens:
    settings = runtime.settings
    return ScopedTokens(settings.user_token_secret or "", "preferences", settings.preference_link_lifetime)


def router(runtime: Runtime, auth: Authenticator, pages: Pages) -> APIRouter:
    api = APIRouter()
    Auth = Annotated[Caller, Depends(auth)]
    links = preference_links(runtime)
    critical = runtime.settings.critical_categories

    def base_url(request: Request) -> str:
        return (runtime.settings.public_url or str(request.base_url)).rstrip("/")

    @api.post("/v1/users/{user_id}/preference-link", tags=["users"], response_model=PreferenceLinkOut,
              responses=error_responses(401, 403, 422))
    async def preference_link(user_id: Annotated[str, Path(min_length=1, max_length=255)], caller: Auth,
                              request: Request, body: Annotated[PreferenceLinkIn | None, Body()] = None,
                              ) -> dict[str, Any]:
        """A link to the user's preference centre (for an email footer or an app's settings
        screen): it reaches that user's switches only, and expires."""
        caller.require_user(user_id)
        token, expires = links.mint(user_id, body.ttl if body else None)
        return {"url": f"{base_url(request)}/p/{token}", "expires_at": iso(expires * 1_000_000)}

    async def open_link(token: str, lang: str | None, accept: str | None) -> _Opened:
        try:
            if len(token) > MAX_TOKEN_CHARS:
                raise ScopedTokenError("not a valid preferences token")
            user_id, expires = links.read(token)
        except ScopedTokenError as exc:
            raise _LinkRefused(negotiate(lang, accept_language=accept), exc.expired) from None
        user = await runtime.store.users.get(user_id)
        return _Opened(user_id, user, negotiate(lang, user.locale if user else None, accept_language=accept),
                       expires)

    async def categories(user_id: str, preferences: Preferences) -> list[str]:
        declared = {info.category or "default" for info in map(runtime.templates.info, runtime.templates.names())}
        received = await runtime.store.feed.categories(user_id)
        shown = ordered(pages.categories.declared(), declared, received, preferences.categories)
        return sorted(shown[:MAX_CATEGORIES], key=lambda category: category in critical)  # always-on ones last

    @api.get("/p/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def centre(token: PageToken, lang: Lang = None, saved: bool = False,
                     accept_language: AcceptLanguage = None) -> HTMLResponse:
        try:
            opened = await open_link(token, lang, accept_language)
        except _LinkRefused as refused:
            return refused.page(pages)
        preferences = opened.preferences()
        rows = grid(preferences, await categories(opened.user_id, preferences), critical)
        return pages.page("preferences.html", opened.lang, rows=rows, saved=saved,
                          switch_url=f"/p/{token}/switch", expires=utc_text(opened.expires))

    @api.post("/p/{token}", include_in_schema=False, response_model=None)
    async def save_form(token: PageToken, request: Request, lang: Lang = None,
                        accept_language: AcceptLanguage = None) -> Response:
        """The form's Save (pages without script): ticked boxes come back, unticked don't."""
        try:
            opened = await open_link(token, lang, accept_language)
        except _LinkRefused as refused:
            return refused.page(pages)
        fields = await _form_fields(request)
        shown = parse_switch_values((v for k, v in fields if k == "shown"), MAX_FORM_SWITCHES)
        on = frozenset(parse_switch_values((v for k, v in fields if k == "on"), MAX_FORM_SWITCHES))
        patch = changed_switches(opened.preferences(), shown, on, critical)
        if patch.categories:
            await runtime.store.users.merge_preferences(opened.user_id, patch)
        suffix = f"&lang={lang}" if lang in ("en", "ko") else ""
        return RedirectResponse(f"/p/{token}?saved=true{suffix}", 303)

    @api.post("/p/{token}/switch", include_in_schema=False)
    async def switch(token: Token, body: SwitchIn) -> dict[str, Any]:
        """One switch flipped on the page (its script): the same merge as the API's PUT."""
        try:
            user_id = links.verify(token)
        except ScopedTokenError as exc:
            raise ApiError(410 if exc.expired else 404, str(exc), "invalid_link") from None
        if body.category in critical:
            raise ApiError(409, f"category {body.category!r} is critical: it is always on", "conflict")
        merged = await runtime.store.users.merge_preferences(
            user_id, Preferences(categories={body.category: {body.channel: body.enabled}}))
        return {"category": body.category, "channel": body.channel,
                "enabled": merged.wants(body.channel, body.category, critical)}

    @api.get("/inbox", response_class=HTMLResponse, include_in_schema=False)
    async def inbox(lang: Lang = None, accept_language: AcceptLanguage = None) -> HTMLResponse:
        return pages.page("inbox.html", negotiate(lang, accept_language=accept_language))

    @api.get("/pages/{name:path}", include_in_schema=False)
    async def asset(name: Annotated[str, Path(max_length=64)]) -> Response:
        if name not in ASSETS:
            raise ApiError(404, f"no page file {name!r}")
        return pages.asset(name)

    return api


async def _form_fields(request: Request) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body (what the page's form sends; its size is
    bounded by DISPATCHER_MAX_BODY_BYTES) as (name, value) pairs; 422 for anything else."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise ApiError(422, "body: the form must be sent as application/x-www-form-urlencoded")
    try:
        return parse_qsl((await request.body()).decode("utf-8"), max_num_fields=2 * MAX_FORM_SWITCHES + 8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(422, f"body: not a form this page sends ({exc})") from None


def build_pages(runtime: Runtime) -> Pages:
    return Pages(Categories.load(runtime.settings.templates_dir))
