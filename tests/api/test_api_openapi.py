"""The OpenAPI document says what the API answers: errors in the one envelope, for the
statuses the routes give, and the request schemas' own bounds."""

from __future__ import annotations

import httpx


async def test_errors_are_documented_as_the_error_envelope(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    send = doc["paths"]["/v1/notifications"]["post"]["responses"]
    for status in ("400", "401", "403", "413", "422"):
        schema = send[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}, status
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # never sent


async def test_request_schemas_carry_their_bounds(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    notification = schemas["NotificationIn"]["properties"]
    recipient_id = {"type": "string", "minLength": 1, "maxLength": 255}
    assert notification["recipients"]["items"]["anyOf"] == [
        recipient_id, {"$ref": "#/components/schemas/RecipientIn"}]
    assert schemas["RecipientIn"]["properties"]["id"].items() >= recipient_id.items()
    assert schemas["UserIn"]["properties"]["name"]["anyOf"][0]["maxLength"] == 200
    channel = {"type": "string", "enum": ["in_app", "email", "sms", "push"]}
    assert notification["channels"]["anyOf"][0]["items"] == channel
    assert schemas["PreferencesIn"]["properties"]["channels"]["propertyNames"]["enum"] == channel["enum"]
