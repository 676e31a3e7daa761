"""A runaway template on a real gateway: a clear 422, /healthz answering all along, SIGTERM obeyed.

Before the render budget, two nested ``range(100000)`` loops in a part hung the preview, every
``/healthz`` timed out and SIGTERM was ignored.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx

SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done"


def _templates(root: Path) -> Path:
    for name, text in (("slow", SLOW), ("huge", "{{ 'x' * 10**8 }}")):
        folder = root / "templates" / name / "default"
        folder.mkdir(parents=True)
        (folder / "sms.txt").write_text(text)
    return root / "templates"


def test_a_runaway_template_is_a_422_while_the_gateway_keeps_answering(
    dispatcher_env, start_server, tmp_path,
):
    env = {**dispatcher_env, "DISPATCHER_TEMPLATES_DIR": str(_templates(tmp_path)),
           "DISPATCHER_RENDER_TIMEOUT": "1"}
    server = start_server(env, "gateway")
    health: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as c:
            while not done.is_set():
                started = time.monotonic()
                assert c.get("/healthz").status_code == 200
                health.append(time.monotonic() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with server.client() as service:
            started = time.monotonic()
            slow = service.post("/v1/templates/slow/preview", json={"data": {}})
            slow_seconds = time.monotonic() - started
            huge = service.post("/v1/templates/huge/preview", json={"data": {}})
            sent = service.post("/v1/notifications", json={
                "id": f"app#{uuid.uuid4()}", "recipients": ["u1"], "template": "slow"})
    finally:
        done.set()
        prober.join(15)
    assert slow.status_code == 422 and slow.json()["error"]["code"] == "template_error"
    assert "DISPATCHER_RENDER_TIMEOUT" in slow.json()["error"]["message"]
    assert slow_seconds < 5
    assert huge.status_code == 422 and "DISPATCHER_RENDER_MAX_CHARS" in huge.json()["error"]["message"]
    assert sent.status_code == 422 and "DISPATCHER_RENDER_TIMEOUT" in sent.json()["error"]["message"]
    assert len(health) >= 10 and max(health) < 1.0  # answered all along, never behind a render
    started = time.monotonic()
    server.stop()  # SIGTERM: a clean exit
    assert time.monotonic() - started < 10
