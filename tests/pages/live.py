"""A real ``dispatcher serve`` and Debian's Chromium, for the browser tests and the README's
screenshots (``python tests/pages/screenshots.py``).

The server runs from this venv on a free port with its store, log and sent-messages file in
a folder of the caller's; Chromium is the system's (``apt-get install chromium``), driven by
the Playwright driver its Python wheel bundles: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from support import free_port, wait_until  # noqa: F401  (re-exported for the page tests)

API_KEY = "pages-key"
SECRET = "pages-user-token-secret-of-32-bytes-or-more"
CHROMIUM = os.environ.get("DISPATCHER_TEST_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT = 120.0


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    #: An app's site allowed to embed the inbox (DISPATCHER_CORS_ORIGINS): see :func:`serve_app_page`.
    app_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sent_path(self) -> Path:
        return self.folder / "sent.jsonl"

    def api(self, token: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            timeout=60.0, trust_env=False)

    def output(self) -> str:
        path = self.folder / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def start_server(folder: Path, **settings: str) -> LiveServer:
    """``dispatcher serve`` (one worker process) answering /healthz; ``settings``: more
    ``DISPATCHER_*`` variables (``cors_origins="…"``)."""
    port, app_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update({
        "DISPATCHER_DATABASE_URL": f"sqlite:///{folder / 'dispatcher.db'}",
        "DISPATCHER_API_KEYS": f"app:{API_KEY}",
        "DISPATCHER_USER_TOKEN_SECRET": SECRET,
        "DISPATCHER_LOG_PROVIDER_PATH": str(folder / "sent.jsonl"),
        "DISPATCHER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DISPATCHER_WORKER_PROCESSES": "1",
        "DISPATCHER_CORS_ORIGINS": f"http://127.0.0.1:{app_port}",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"DISPATCHER_{k.upper()}": v for k, v in settings.items()})
    with (folder / "serve.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "dispatcher", "serve", "--port", str(port)],
                                   env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(process, port, folder, app_port)
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(server):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"dispatcher serve did not start:\n{server.output()[-4000:]}")
        time.sleep(0.1)
    return server


def _healthy(server: LiveServer) -> bool:
    try:
        return httpx.get(f"{server.url}/healthz", timeout=5.0, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def user_token(user_id: str, ttl: int = 600) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time()) + ttl}, SECRET, algorithm="HS256")


def add_user(server: LiveServer, user_id: str, locale: str = "en") -> None:
    """A user every channel can reach: email, phone and an Android device."""
    with server.api() as api:
        assert api.put(f"/v1/users/{user_id}", json={
            "email": f"{user_id}@example.com", "phone": "+82 10-1234-5678", "locale": locale,
        }).status_code == 200
        assert api.post(f"/v1/users/{user_id}/devices", json={
            "token": f"device-of-{user_id}", "platform": "android"}).status_code == 201


def send(server: LiveServer, body: dict[str, Any]) -> None:
    with server.api() as api:
        r = api.post("/v1/notifications", json=body)
        assert r.status_code == 202, r.text


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


@contextlib.contextmanager
def serve_app_page(port: int, html: str) -> Iterator[str]:
    """An app's own web page (another origin than the dispatcher) at ``http://127.0.0.1:port/``."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        site.shutdown()
        site.server_close()
