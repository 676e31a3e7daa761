"""End-to-end fixtures: ``dispatcher serve`` as a real subprocess, and small HTTP/poll helpers.

The server runs from this venv (``python -m dispatcher serve``) on a free port, with its
stdout/stderr in files under the test's ``tmp_path`` (never a pipe that could fill up and
block it). Every process a test starts is killed in the fixture's finalizer, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil
import pytest
from support import free_port, wait_until

API_KEY = "appkey"
USER_TOKEN_SECRET = "e2e-user-token-secret-at-least-32-bytes"  # HS256 wants >= 32
START_TIMEOUT = 120.0  # seconds for a (re)started server to answer /healthz on a loaded machine
STOP_TIMEOUT = 60.0



@dataclass
class Server:
    """One ``dispatcher serve`` process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str = API_KEY, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server, authenticated with ``token`` (default: the service key)."""
        kwargs.setdefault("timeout", httpx.Timeout(60.0))
        kwargs.setdefault("trust_env", False)  # never through an HTTP proxy from the environment
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            **kwargs)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL to the process and every process it started (``serve``'s worker processes):
        no shutdown code runs anywhere, exactly like a crashed machine."""
        if self.process.poll() is None:
            try:
                tree = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            os.kill(self.pid, signal.SIGKILL)
            for child in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            psutil.wait_procs(tree, timeout=STOP_TIMEOUT)
        self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, then wait for a clean exit (uvicorn finishes the chunks in progress)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"dispatcher serve did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM:\n"
                        f"{self._tail()}")
        # uvicorn re-raises the SIGTERM it caught once shutdown is done, hence -SIGTERM.
        assert code in (0, -signal.SIGTERM), (
            f"dispatcher serve exited with {code} on SIGTERM:\n{self._tail()}")

    def _tail(self, lines: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def _healthy(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/healthz", timeout=5.0, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def dispatcher_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a server whose store and sent-messages log live in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update({
        "DISPATCHER_DATABASE_URL": f"sqlite:///{tmp_path / 'dispatcher.db'}",
        "DISPATCHER_API_KEYS": f"app:{API_KEY}",
        "DISPATCHER_USER_TOKEN_SECRET": USER_TOKEN_SECRET,
        "DISPATCHER_LOG_PROVIDER_PATH": str(tmp_path / "sent.jsonl"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(env, command="serve")`` starts ``dispatcher serve`` (or ``gateway``) and
    returns once ``/healthz`` answers; ``command="worker"`` returns once the worker runs."""
    started: list[Server] = []

    def start(env: dict[str, str], command: str = "serve") -> Server:
        if command == "worker":
            return _start_worker(env, tmp_path, started)
        for _ in range(3):  # another process may grab the free port before the server binds it
            port = free_port()
            log_path = tmp_path / f"{command}-{len(started) + 1}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "dispatcher", command, "--port", str(port)],
                    env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
            server = Server(process, port, log_path, env)
            started.append(server)
            deadline = time.monotonic() + START_TIMEOUT
            while not _healthy(server):
                if process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"dispatcher serve did not answer /healthz within "
                                f"{START_TIMEOUT:.0f}s:\n{server._tail()}")
                time.sleep(0.1)
            else:
                return server
            if "address already in use" not in server.output().lower():
                break
        pytest.fail(f"dispatcher serve exited with {process.returncode} while starting:\n"
                    f"{server._tail()}")

    yield start
    for server in started:
        if server.process.poll() is None:
            server.kill()


def _start_worker(env: dict[str, str], tmp_path: Path, started: list[Server]) -> Server:
    log_path = tmp_path / f"worker-{len(started) + 1}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "dispatcher", "worker"],
                                   env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    worker = Server(process, 0, log_path, env)
    started.append(worker)
    deadline = time.monotonic() + START_TIMEOUT
    while "worker started" not in worker.output():
        if process.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"dispatcher worker did not start:\n{worker._tail()}")
        time.sleep(0.1)
    return worker


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """:func:`wait_until`, for the tests (``wait_until(check, timeout=…, what=…)``)."""
    return wait_until


@pytest.fixture
def user_token() -> Callable[[str], str]:
    """``user_token(user_id)``: an end user's JWT for the servers started with ``dispatcher_env``."""
    def mint(user_id: str) -> str:
        return jwt.encode({"sub": user_id, "exp": int(time.time()) + 300}, USER_TOKEN_SECRET,
                          algorithm="HS256")
    return mint
