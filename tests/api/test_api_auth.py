"""User tokens as an end user's app presents them: ``exp`` must be a number, and no further
ahead than DISPATCHER_USER_TOKEN_MAX_LIFETIME (30 days by default)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from support import USER_SECRET

from dispatcher.config import Settings

DAY = 86400


def token(exp: Any) -> str:
    return jwt.encode({"sub": "u1", "exp": exp}, USER_SECRET, algorithm="HS256")


async def feed(client: httpx.AsyncClient, user_token: str) -> httpx.Response:
    return await client.get("/v1/users/u1/notifications",
                            headers={"Authorization": f"Bearer {user_token}"})


def test_the_documented_default_is_30_days() -> None:
    assert Settings().user_token_max_lifetime == 30 * DAY


@pytest.mark.parametrize("exp", [lambda now: now + 300, lambda now: now + 29 * DAY,
                                 lambda now: now + 3600.5])
async def test_a_token_with_a_numeric_exp_within_the_lifetime_is_accepted(
        client: httpx.AsyncClient, exp: Any) -> None:
    assert (await feed(client, token(exp(int(time.time()))))).status_code == 200


@pytest.mark.parametrize(("exp", "message"), [
    (lambda now: str(now + 300), "must be a number"),
    (lambda now: True, "expired"),  # PyJWT reads True as 1
    (lambda now: [now + 300], "(exp) must be"),
    (lambda now: now + 31 * DAY, "DISPATCHER_USER_TOKEN_MAX_LIFETIME"),
    (lambda now: 2**53, "DISPATCHER_USER_TOKEN_MAX_LIFETIME"),
    (lambda now: now - 10, "expired"),
])
async def test_a_string_or_far_future_exp_is_a_401(client: httpx.AsyncClient, exp: Any,
                                                    message: str) -> None:
    r = await feed(client, token(exp(int(time.time()))))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized" and message in r.json()["error"]["message"]
