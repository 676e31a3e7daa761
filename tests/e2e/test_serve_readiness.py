"""``dispatcher serve``'s ``/readyz`` once its worker processes take chunks.

``serve`` answers HTTP within a fraction of a second, while each worker process it starts
spends about a second of CPU opening its runtime (imports, store, providers). A deploy or a
load balancer asking ``/readyz`` must not take it for ready before it can deliver: readiness
comes once every worker process has said it started, never before (``/healthz``, liveness,
answers all along).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from conftest import START_TIMEOUT, Server


def test_serve_is_ready_only_once_every_worker_process_has_started(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server]) -> None:
    server = start_server(dispatcher_env | {"DISPATCHER_WORKER_PROCESSES": "2"})
    answers: list[tuple[int, Any]] = []
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        while True:
            ready = client.get("/readyz")
            started = server.output().count("worker started")  # read after the answer
            answers.append((ready.status_code, ready.json()))
            if ready.status_code == 200:
                break
            assert ready.status_code == 503, ready.text
            assert "worker processes still starting" in ready.json()["error"]["message"]
            assert client.get("/healthz").status_code == 200
            assert time.monotonic() < deadline, f"not ready in {START_TIMEOUT:.0f}s: {answers[-3:]}"
            time.sleep(0.02)
    assert answers[-1] == (200, {"status": "ready"})
    # Each worker process logs its start before it tells serve; both had done so.
    assert started == 2, server.output()
    server.stop()
