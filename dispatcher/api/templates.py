"""``/v1/templates``: list the templates and preview one (services only)."""


import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.errors import error_responses
from dispatcher.api.schemas import PreviewIn, PreviewOut, TemplateList
from dispatcher.rendering import TemplateInfo
from dispatcher.runtime import Runtime

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
        caller.require_service()
        info = templates.info(name)  # UnknownTemplate: 404
        channels = body.channels or sorted(info.channels)
        context = {**body.data, "state": body.state, "category": info.category or "default",
                   "notification_id": "preview", "locale": body.locale}
        # In a thread: a template may take up to its render budget; /healthz must not wait.
        rendered = await asyncio.to_thread(templates.render, name, channels, context,
                                           body.locale)  # 422s
        return {"template": name, "locale": body.locale, "channels": rendered}

    return api


def _info_json(info: TemplateInfo) -> dict[str, Any]:
    return {"name": info.name, "channels": sorted(info.channels), "locales": list(info.locales),
            "category": info.category, "description": info.description}
