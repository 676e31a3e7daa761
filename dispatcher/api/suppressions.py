"""``/v1/suppressions/{email}``: see and lift the suppression of an email address (services)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.errors import ApiError, error_responses
from dispatcher.api.schemas import SuppressionOut
from dispatcher.api.timefmt import iso
from dispatcher.model import Suppression
from dispatcher.runtime import Runtime

__all__ = ["router", "suppression_json"]

Email = Annotated[str, Path(min_length=3, max_length=320)]


def router(runtime: Runtime, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])
    Auth = Annotated[Caller, Depends(auth)]
    store = runtime.store.suppressions

    @api.get("/{email}", response_model=SuppressionOut, responses=error_responses(401, 403, 404, 422))
    async def get_suppression(email: Email, caller: Auth) -> dict[str, Any]:
        caller.require_service()
        found = [s for s in await store.get_many([email]) if s.channel == "email"]
        if not found:
            raise ApiError(404, f"{email!r} is not suppressed")
        return suppression_json(found[0])

    @api.delete("/{email}", status_code=204, responses=error_responses(401, 403, 404, 422))
    async def lift_suppression(email: Email, caller: Auth) -> Response:
        caller.require_service()
        if not await store.lift(email):
            raise ApiError(404, f"{email!r} is not suppressed")
        return Response(status_code=204)

    return api


def suppression_json(s: Suppression) -> dict[str, Any]:
    return {"address": s.address, "channel": s.channel, "cause": s.cause, "detail": s.detail,
            "since": iso(s.created_at)}
