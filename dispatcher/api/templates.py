"""``/v1/templates``: list the templates and preview one (services only)."""


import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.errors import error_responses
from dispatcher.api.schemas import PreviewIn, PreviewOut, TemplateList
from dispatcher.rendering import TemplateInfo
from dispatcher.runtime import Runtime
from dispatcher.template_check import EXAMPLE_UNSUBSCRIBE_URL
from dispatcher.template_preview import preview as render_preview

__all__ = ["router"]


def router(runtime: Runtime, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1/templates", tags=["templates"])
    Auth = Annotated[Caller, Depends(auth)]
    templates = runtime.templates

    @api.get("", response_model=TemplateList, responses=error_responses(401, 403))
    async def list_templates(caller: Auth) -> dict[str, Any]:
        caller.require_service()
        return {"items": [_info_json(templates.info(n)) for n in templates.names()]}

    @api.post("/{name}/preview", response_model=PreviewOut,
              responses=error_responses(401, 403, 404, 422))
    async def preview_template(name: str, body: PreviewIn, caller: Auth) -> dict[str, Any]:
        """Render every part (of ``channels``, default all) for ``data``, ``state`` and
        ``user`` (``user.*`` in templates; its ``locale`` is used when ``locale`` is not
        given); ``variants`` names the locale folder each part came from."""
        caller.require_service()
        current = templates.current()
        info = current.info(name)  # UnknownTemplate: 404
        user = body.user.model_dump() if body.user else None
        category = info.category or "default"
        # A stand-in link, never a real token: a preview must not mint unsubscribe links.
        link = (EXAMPLE_UNSUBSCRIBE_URL if runtime.links is not None
                and category not in runtime.settings.critical_categories else None)
        # In a thread: a template may take up to its render budget; /healthz must not wait.
        result = await asyncio.to_thread(
            render_preview, current, name, body.channels, data=body.data, user=user,
            state=body.state, locale=body.locale, unsubscribe_url=link)  # 422s
        return result.to_json()

    return api


def _info_json(info: TemplateInfo) -> dict[str, Any]:
    return {"name": info.name, "channels": sorted(info.channels), "locales": list(info.locales),
            "category": info.category, "description": info.description}
