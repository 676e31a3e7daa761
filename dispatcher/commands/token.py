"""``dispatcher token USER``: an end user's JWT, as the API accepts it (see ``dispatcher.api.auth``).

HS256 with ``DISPATCHER_USER_TOKEN_SECRET`` (from the environment or ``.env``), claims ``sub``
(the user id), ``iat`` and ``exp`` (a number, required). A lifetime longer than
``DISPATCHER_USER_TOKEN_MAX_LIFETIME`` is refused here, since the API would refuse the token.
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import jwt
import typer

from dispatcher.config import ConfigurationError, Settings

__all__ = ["EXAMPLES", "parse_duration", "token"]

EXAMPLES = """
    dispatcher token u1
    dispatcher token u1 --ttl 15m
    curl -H "Authorization: Bearer $(dispatcher token u1)" localhost:8000/v1/users/u1/notifications
"""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def token(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user id (the token's sub).", show_default=False)],
    ttl: Annotated[str, typer.Option(help="Lifetime: seconds, or a number with s, m, h or d.")] = "1h",
) -> None:
    """Mint an end user's token (JWT) for testing the user-facing endpoints."""
    seconds = parse_duration(ttl)
    settings = Settings()
    if not settings.user_token_secret:
        raise ConfigurationError("DISPATCHER_USER_TOKEN_SECRET is unset: set it to the server's secret")
    if seconds > settings.user_token_max_lifetime:
        raise typer.BadParameter(f"{ttl} is longer than DISPATCHER_USER_TOKEN_MAX_LIFETIME "
                                 f"({settings.user_token_max_lifetime:,.0f} s): the API would refuse it",
                                 param_hint="--ttl")
    if not user or len(user) > 255:
        raise typer.BadParameter("a user id is 1 to 255 characters", param_hint="USER")
    now = int(time.time())
    print(jwt.encode({"sub": user, "iat": now, "exp": now + seconds}, settings.user_token_secret,
                     algorithm="HS256"))


def parse_duration(text: str) -> int:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` -> seconds (at least 1)."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text.lower())
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 90, 90s, 15m, 1h or 7d",
                                 param_hint="--ttl")
    return int(match[1]) * _UNITS[match[2] or "s"]
