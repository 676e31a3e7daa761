"""A webhook receiver for tests: verifies every request with the ``standardwebhooks`` package
(the specification's reference implementation), answers 500 while told to fail, and records
each attempt by ``webhook-id`` (so duplicates and retries are counted)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook

__all__ = ["Receiver"]


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.secret: str | None = None
        self.fail_first = fail_first     # answer 500 to this many attempts (then 204)
        self.failing = False             # answer 500 to every attempt while set
        self.holding = False             # answer nothing until ``release`` is set, while set
        self.release = threading.Event()
        self.attempts: Counter[str] = Counter()
        self.accepted: dict[str, dict[str, Any]] = {}   # webhook-id -> payload, answered 2xx
        self.accepted_twice: list[str] = []
        self.bad_signatures = 0
        self.held = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.holding:
                    with receiver.lock:
                        receiver.held += 1
                    receiver.release.wait(120)
                self.send_response(receiver.answer(body, dict(self.headers.items())))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answer(self, body: bytes, headers: dict[str, str]) -> int:
        headers = {k.lower(): v for k, v in headers.items()}
        try:
            assert self.secret is not None
            payload = Webhook(self.secret).verify(body, headers)
        except Exception:
            with self.lock:
                self.bad_signatures += 1
            return 401
        wid = headers["webhook-id"]
        with self.lock:
            self.attempts[wid] += 1
            if self.failing or sum(self.attempts.values()) <= self.fail_first:
                return 500
            if wid in self.accepted:
                self.accepted_twice.append(wid)
            self.accepted[wid] = payload if isinstance(payload, dict) else json.loads(body)
        return 204

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.accepted.values() if p["type"] == kind]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
