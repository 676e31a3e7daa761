"""CI step: the wheel, installed on its own, gives a dispatcher that starts and delivers.

Builds the wheel from this checkout, installs it into a fresh venv in a temporary folder
outside the checkout, runs ``dispatcher serve`` from another folder on a free port with a
temporary SQLite file, then PUTs a user, POSTs one notification and waits until its in-app
row is ``sent`` (``GET /v1/notifications/{id}``), and that the API pages' assets are served
from the wheel (``/docs`` works offline). Only the standard library, so any Python
>= 3.11 runs it: ``python .ci/wheel_smoke.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
KEY = "smoke-key"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dispatcher-wheel-") as tmp:
        root = Path(tmp)
        python = _install(root)
        run_dir = root / "elsewhere"
        run_dir.mkdir()
        port = _free_port()
        log = run_dir / "serve.log"
        server = _start(python, run_dir, port, log)
        try:
            _exercise(f"http://127.0.0.1:{port}", server, log)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    print("wheel smoke: the installed wheel served a notification (in_app sent)")
    return 0


def _install(root: Path) -> Path:
    dist = root / "dist"
    _check([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(CHECKOUT)])
    wheel, = dist.glob("notification_dispatcher-*.whl")
    _check([sys.executable, "-m", "venv", str(root / "venv")])
    python = root / "venv" / "bin" / "python"
    _check([str(python), "-m", "pip", "install", "-q", str(wheel)])
    return python


def _start(python: Path, run_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISPATCHER_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"DISPATCHER_DATABASE_URL": f"sqlite:///{run_dir / 'smoke.db'}",
                "DISPATCHER_API_KEYS": f"smoke:{KEY}", "DISPATCHER_WORKER_PROCESSES": "1",
                "DISPATCHER_QUEUE_POLL_INTERVAL": "0.05"})
    dispatcher = python.parent / "dispatcher"
    with log.open("wb") as out:
        return subprocess.Popen([str(dispatcher), "serve", "--port", str(port)], cwd=run_dir,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def _exercise(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    _wait(lambda: _call(base, "GET", "/healthz")[0] == 200, server, log, "/healthz")
    status, user = _call(base, "PUT", "/v1/users/u1", {"email": "ann@example.com"})
    assert status == 200, (status, user)
    notification_id = f"smoke#{uuid.uuid4()}"
    status, body = _call(base, "POST", "/v1/notifications", {
        "id": notification_id, "recipients": ["u1"], "template": "app-install",
        "data": {"app_name": "Smoke"}, "state": "installing"})
    assert status == 202, (status, body)
    path = "/v1/notifications/" + notification_id.replace("#", "%23")
    _wait(lambda: _call(base, "GET", path)[1].get("counts", {}).get("in_app", {}).get("sent") == 1,
          server, log, "the in-app row to be sent")
    for asset in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/redoc.standalone.js"):
        assert _fetch(base, asset) == 200, f"{asset} is not served by the installed wheel"


def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, {}


def _fetch(base: str, path: str) -> int:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait(check: Any, server: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"wheel smoke: gave up waiting for {what}; server log:\n"
                     f"{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)


def _check(argv: list[str]) -> None:
    subprocess.run(argv, check=True, cwd=tempfile.gettempdir())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
