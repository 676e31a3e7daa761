"""Request bounds as a caller sees them: 413 for a body over DISPATCHER_MAX_BODY_BYTES (before
authentication and parsing, declared or streamed), 422 naming ``data`` for data that is too
large, too deep or not JSON proper. The process-level proof (a 100 MB body against a real
gateway, its memory measured) is tests/e2e/test_gateway_limits.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support import new_id

from dispatcher.config import Settings

LIMIT = 2 * 1024 * 1024  # the documented default


def notification(**data: Any) -> dict[str, Any]:
    return {"id": new_id(), "recipients": ["u1"], "template": "app-install",
            "data": {"app_name": "Foo", **data}, "state": "installing"}


def test_the_documented_defaults() -> None:
    s = Settings()
    assert (s.max_body_bytes, s.max_data_bytes, s.max_data_depth) == (LIMIT, 65536, 16)


async def test_a_declared_oversized_body_is_a_413_before_authentication(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")
    r = await client.post("/v1/notifications", content=b"{" * (LIMIT + 1),
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert str(LIMIT) in r.json()["error"]["message"]
    assert r.headers["connection"] == "close"


async def test_a_streamed_oversized_body_is_a_413_and_is_not_read_to_the_end(
        client: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal sent
        for _ in range(64):
            sent += 256 * 1024
            yield b" " * (256 * 1024)

    client.headers.pop("Authorization")
    r = await client.post("/v1/notifications", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert sent <= LIMIT + 2 * 256 * 1024  # it stopped asking for more just past the limit


async def test_a_body_at_the_limit_is_parsed_as_usual(client: httpx.AsyncClient) -> None:
    body = json.dumps(notification()).encode()
    r = await client.post("/v1/notifications", content=body + b" " * (LIMIT - len(body)),
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 202


@pytest.mark.parametrize(("data", "message"), [
    ({"blob": "x" * 70_000}, "the limit is 65536"),
    ({"a": json.loads("[" * 16 + "]" * 16)}, "deeper than 16 levels"),
    ({"items": [{"k": 1}] * 3}, None),  # 3 levels: fine
])
async def test_data_is_bounded_in_size_and_depth(client: httpx.AsyncClient, data: dict[str, Any],
                                                 message: str | None) -> None:
    r = await client.post("/v1/notifications", json=notification(**data))
    if message is None:
        assert r.status_code == 202
        return
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid" and error["message"].startswith("data: ") and message in error["message"]


@pytest.mark.parametrize(("raw", "message"), [
    ('{"n": NaN}', "NaN and Infinity"),
    ('{"n": -Infinity}', "NaN and Infinity"),
    ('{"s": "\\ud800"}', "lone surrogate"),
    ('{"\\udfff": 1}', "lone surrogate"),
])
async def test_data_must_be_json_proper(client: httpx.AsyncClient, raw: str, message: str) -> None:
    body = json.dumps(notification()).replace('{"app_name": "Foo"}', raw)
    r = await client.post("/v1/notifications", content=body,
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("data: ") and message in r.json()["error"]["message"]
