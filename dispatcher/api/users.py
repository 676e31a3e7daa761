"""``/v1/users/{id}``: profile (``name``, ``attributes``), contact data, devices and preferences.

``PUT`` changes only the fields given; ``attributes`` given replaces the stored object whole
(``null`` clears it)."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.errors import ApiError, error_responses
from dispatcher.api.schemas import DeviceIn, DeviceOut, PreferencesIn, PreferencesOut, UserIn, UserOut
from dispatcher.api.suppressions import suppression_json
from dispatcher.api.timefmt import iso
from dispatcher.contacts import normalize_email, normalize_phone
from dispatcher.model import UserRecord
from dispatcher.preferences import Preferences
from dispatcher.runtime import Runtime

__all__ = ["router"]


def router(runtime: Runtime, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1/users/{user_id}", tags=["users"])
    Auth = Annotated[Caller, Depends(auth)]
    users = runtime.store.users

    @api.put("", response_model=UserOut, response_model_exclude_unset=True,
             responses=error_responses(401, 403, 422))
    async def put_user(user_id: str, body: UserIn, caller: Auth) -> dict[str, Any]:
        caller.require_service()
        fields = _normalised(body, runtime.settings.default_phone_region)
        return _user_json(await users.upsert(_checked_id(user_id), fields))

    @api.get("", response_model=UserOut, response_model_exclude_unset=True,
             responses=error_responses(401, 403, 404))
    async def get_user(user_id: str, caller: Auth) -> dict[str, Any]:
        caller.require_user(user_id)
        user = await users.get(user_id)
        if user is None:
            raise ApiError(404, f"no user {user_id!r}")
        held = await runtime.store.suppressions.get_many(
            [user.email] if user.email else [], [d.token for d in user.devices])
        return _user_json(user) | {"suppressions": [suppression_json(s) for s in held]}

    @api.post("/devices", status_code=201, response_model=DeviceOut,
              responses=error_responses(401, 403, 422))
    async def add_device(user_id: str, body: DeviceIn, caller: Auth) -> dict[str, Any]:
        caller.require_user(user_id)
        device = await users.add_device(_checked_id(user_id), body.token, body.platform)
        return {"token": device.token, "platform": device.platform, "active": device.active}

    @api.delete("/devices/{token}", status_code=204, response_class=Response,
                responses=error_responses(401, 403, 404))
    async def remove_device(user_id: str, token: str, caller: Auth) -> Response:
        caller.require_user(user_id)
        if not await users.remove_device(user_id, token):
            raise ApiError(404, f"user {user_id!r} has no device with that token")
        return Response(status_code=204)

    @api.get("/preferences", response_model=PreferencesOut, response_model_exclude_unset=True,
             responses=error_responses(401, 403))
    async def get_preferences(user_id: str, caller: Auth) -> dict[str, Any]:
        caller.require_user(user_id)
        user = await users.get(user_id)
        return (user.preferences if user else Preferences()).to_json()

    @api.put("/preferences", response_model=PreferencesOut, response_model_exclude_unset=True,
             responses=error_responses(401, 403, 422))
    async def put_preferences(user_id: str, body: PreferencesIn, caller: Auth) -> dict[str, Any]:
        caller.require_user(user_id)
        raw = body.model_dump()
        if "quiet_hours" not in body.model_fields_set:
            raw.pop("quiet_hours")  # omitted: unchanged (null: none)
        patch = Preferences.from_json(raw)
        return (await users.merge_preferences(_checked_id(user_id), patch)).to_json()

    return api


def _checked_id(user_id: str) -> str:
    if not user_id or len(user_id) > 255:
        raise ApiError(422, "user_id: must be 1..255 characters")
    return user_id


def _normalised(body: UserIn, region: str | None) -> dict[str, Any]:
    """The fields given, contact data normalised (InvalidContact names the field: 422)."""
    fields = body.model_dump(exclude_unset=True)
    if fields.get("email") is not None:
        fields["email"] = normalize_email(fields["email"])
    if fields.get("phone") is not None:
        fields["phone"] = normalize_phone(fields["phone"], region)
    return fields


def _user_json(user: UserRecord) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email, "phone": user.phone,
            "locale": user.locale, "timezone": user.timezone,
            "attributes": dict(user.attributes), "preferences": user.preferences.to_json(),
            "devices": [{"token": d.token, "platform": d.platform, "active": d.active}
                        for d in user.devices],
            "created_at": iso(user.created_at), "updated_at": iso(user.updated_at)}
