"""The OpenAPI document says what the API answers: the bearer scheme on every protected
operation, a named model for every success, errors in the one envelope for the statuses the
routes give, request examples the API accepts, and the request schemas' own bounds; and its
pages (/docs, /redoc) need nothing but the app."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx

ERROR = {"$ref": "#/components/schemas/ErrorOut"}


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


PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/unsubscribe/{token}",
          "/v1/providers/ses/events"}  # SNS signs it; it can't send a key


async def _operations(client: httpx.AsyncClient) -> list[tuple[str, str, dict[str, Any]]]:
    doc = (await client.get("/openapi.json")).json()
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


async def test_every_protected_operation_declares_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for method, path, op in await _operations(client):
        expected = (None if path in PUBLIC else [{"bearer": []}, {}] if path.endswith("/stream")
                    else [{"bearer": []}])  # the stream: the header, or a stream token in the query
        assert op.get("security") == expected, (method, path)
        if expected:  # and it says what an unauthenticated call gets
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == ERROR


async def test_every_success_is_typed_and_every_error_is_the_envelope(client: httpx.AsyncClient) -> None:
    ops = await _operations(client)
    assert len(ops) >= 17  # (the unsubscribe pages need DISPATCHER_PUBLIC_URL)
    for method, path, op in ops:
        successes = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert successes, (method, path)
        for status, response in op["responses"].items():
            json_schema = response.get("content", {}).get("application/json", {}).get("schema")
            if status.startswith("2") and json_schema is not None:
                assert set(json_schema) == {"$ref"}, (method, path, status)  # a named model
            elif not status.startswith("2"):
                assert json_schema == ERROR, (method, path, status)
        if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
            assert "422" in op["responses"], (method, path)  # what it answers to bad input
        assert {"408", "413", "503"} <= set(op["responses"]) or path == "/healthz", (method, path)


async def test_the_request_examples_are_accepted(client: httpx.AsyncClient) -> None:
    """Every request-body example of the document, sent as it is with the service key, gets a
    2xx (the id of the notification example included: ``app#<uuid>``)."""
    sent = 0
    for method, path, op in await _operations(client):
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        if content is None:
            continue
        schema = content["schema"]
        ref = schema.get("$ref") or next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)
        doc = (await client.get("/openapi.json")).json()
        for example in doc["components"]["schemas"][ref.rsplit("/", 1)[1]].get("examples", []):
            url = path.replace("{user_id}", "user-1").replace("{name}", "app-install")
            response = await client.request(method, url, json=example)
            assert response.status_code < 300, (method, path, response.text)
            sent += 1
    assert sent >= 5


async def test_the_id_parameter_example_is_a_valid_id(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    [param] = doc["paths"]["/v1/notifications/{notification_id}"]["get"]["parameters"]
    example = param["examples"]["id"]["value"]
    response = await client.get(f"/v1/notifications/{quote(example, safe='')}")
    assert response.status_code == 404, response.text  # well-formed, just not sent yet


async def test_docs_and_redoc_load_everything_from_the_app(client: httpx.AsyncClient) -> None:
    """Offline: the pages reference no other host, and every script, style and icon they name
    is served by the app itself."""
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assert "openapi.json" in html
        assert re.findall(r"(?:src|href)=[\"']?(https?:)?//", html) == [], page
        assets = re.findall(r"(?:src=|href=|url: ?)[\"'](/[^\"']+)[\"']", html)
        assert any(a.endswith(".js") for a in assets), page
        for asset in assets:
            response = await client.get(asset)
            assert response.status_code == 200, asset
            assert len(response.content) > 0, asset
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"]
    assert "SwaggerUIBundle" in bundle.text
