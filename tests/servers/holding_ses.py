"""An SES v2 endpoint (``SendEmail`` only) on a thread of its own, for tests that run the
dispatcher as a real process: it answers the first ``throttle_first`` requests with a
throttling error (429, ``Retry-After: 0.2``), then holds every request it receives without
answering, as a provider stuck mid-storm would, until :meth:`HoldingSes.accept_from_now_on`;
from then on it accepts every message, the held ones included (``accepted_held``). It records
who each request was for: ``throttled``, ``held``, ``accepted``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

from aiohttp import web

__all__ = ["HoldingSes"]


class HoldingSes:
    """An SES v2 endpoint on its own thread: throttles, then holds, then (released) accepts."""

    def __init__(self, throttle_first: int = 0) -> None:
        self.throttle_first = throttle_first
        self.throttled: list[str] = []
        self.held: list[str] = []      # recipients of requests received and never answered
        self.accepted: list[str] = []  # recipients answered with a MessageId at once
        self.accepted_held: list[str] = []  # held requests answered with a MessageId later
        self._holding = True
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> HoldingSes:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.accept_from_now_on()  # held handlers end, so the server can stop
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def held_count(self) -> int:
        with self._lock:
            return len(self.held)

    def accept_from_now_on(self) -> None:
        """Answer every request (held ones included) with success."""
        def release() -> None:
            self._holding = False
            assert self._release is not None
            self._release.set()
        self._loop.call_soon_threadsafe(release)

    async def _start(self) -> str:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v2/email/outbound-emails", self._send_email)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _send_email(self, request: web.Request) -> web.Response:
        [to] = (await request.json())["Destination"]["ToAddresses"]
        with self._lock:
            if len(self.throttled) < self.throttle_first:
                self.throttled.append(to)
                return web.json_response(
                    {"message": "Maximum sending rate exceeded."}, status=429,
                    headers={"x-amzn-ErrorType": "TooManyRequestsException:", "Retry-After": "0.2"})
            holding = self._holding
            if holding:
                self.held.append(to)
        if holding:
            assert self._release is not None
            await self._release.wait()
            with self._lock:
                self.accepted_held.append(to)
            return web.json_response({"MessageId": f"ses-{uuid.uuid4()}"})
        with self._lock:
            self.accepted.append(to)
        return web.json_response({"MessageId": f"ses-{uuid.uuid4()}"})
