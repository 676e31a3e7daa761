"""What an operator sees of a live ``dispatcher serve``: ``/metrics`` (counting the worker
processes too) agrees with the ledger, and JSON logs are JSON, carry the request id, and warn
of every failed delivery with its reason.

The bulk mixes outcomes on purpose: users 0, 3, 6, … have an email address, a phone number and
the locale ``ko``, whose email part needs data the notification lacks: their three rows fail
(``template_error``); users 1, 4, 7, … have a phone number only: SMS sent (through the log
provider, timed), email skipped (``no_contact``); the others have no contact at all. Every
in-app row of a user not in ``ko`` is sent.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from support import free_port, path_id

if TYPE_CHECKING:
    from e2e.conftest import Server

TEMPLATE = "broken-email"
RECIPIENTS = 600  # 30 chunks of 20: both worker processes take some


def _templates(root: Path) -> Path:
    """A template whose Korean email needs ``account_code``: the gateway's trial render (no
    locale) passes, every user whose locale is ``ko`` fails, at the worker."""
    for locale, email in (("default", "Your account is fine"), ("ko", "Your code is {{ account_code }}")):
        folder = root / "templates" / TEMPLATE / locale
        folder.mkdir(parents=True)
        (folder / "in_app.title.txt").write_text("Hello")
        (folder / "in_app.body.txt").write_text("Something happened to {{ app_name }}")
        (folder / "sms.txt").write_text("{{ app_name }}: something happened")
        (folder / "email.subject.txt").write_text("Your account")
        (folder / "email.txt").write_text(email)
        (folder / "email.html").write_text(f"<p>{email}</p>")
    (root / "templates" / TEMPLATE / "template.json").write_text(json.dumps(
        {"description": "Korean email needs account_code", "category": "account"}))
    return root / "templates"


def _env(env: dict[str, str], tmp_path: Path, processes: int) -> dict[str, str]:
    env.update({"DISPATCHER_TEMPLATES_DIR": str(_templates(tmp_path)), "DISPATCHER_CHUNK_SIZE": "20",
                "DISPATCHER_WORKER_PROCESSES": str(processes), "DISPATCHER_WORKER_CONCURRENCY": "1",
                "DISPATCHER_LOG_FORMAT": "json",
                # No PROMETHEUS_MULTIPROC_DIR: serve makes its own, here (not in /tmp).
                "TMPDIR": str(tmp_path)})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def _send_bulk(server: Server, count: int) -> str:
    with server.client() as client:
        for i in range(count):
            contact = [{"email": f"u{i}@example.com", "phone": f"+8210{i:08d}", "locale": "ko"},
                       {"phone": f"+8210{i:08d}"}, None][i % 3]
            if contact is not None:
                response = client.put(f"/v1/users/u{i}", json=contact)
                assert response.status_code == 200, response.text
        notification_id = f"app#{uuid.uuid4()}"
        response = client.post("/v1/notifications", json={
            "id": notification_id, "recipients": [f"u{i}" for i in range(count)], "template": TEMPLATE,
            "data": {"app_name": "Notes"}, "channels": ["in_app", "email", "sms"]})
        assert response.status_code == 202, response.text
    return notification_id


def _settled(server: Server, notification_id: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        with server.client() as client:
            counts: dict[str, Any] = client.get(f"/v1/notifications/{path_id(notification_id)}").json()["counts"]
        return counts if all(c["pending"] == 0 for c in counts.values()) else None
    return check


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{labels: value}`` of one metric in the Prometheus text format."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match[1])))
            found[labels] = float(match[2])
    return found


def _reasons(server: Server, notification_id: str) -> Counter[tuple[str, str, str]]:
    """(channel, status, reason) of every ledger row, read page by page."""
    rows: Counter[tuple[str, str, str]] = Counter()
    cursor = None
    with server.client() as client:
        while True:
            page = client.get(f"/v1/notifications/{path_id(notification_id)}/deliveries",
                              params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
            rows.update((r["channel"], r["status"], r["reason"] or "") for r in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return rows


def _json_lines(server: Server) -> list[dict[str, Any]]:
    lines = [line for line in server.output().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def test_metrics_count_what_the_ledger_holds_across_worker_processes(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path,
        wait_until: Callable[..., Any]) -> None:
    server = start_server(_env(dispatcher_env, tmp_path, processes=2))
    wait_until(lambda: any(line.get("message", "").startswith("worker started")
                           for line in _json_lines(server)), timeout=120, what="the worker process")
    notification_id = _send_bulk(server, RECIPIENTS)
    counts = wait_until(_settled(server, notification_id), timeout=180, what="every row to be final")

    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    deliveries = _samples(response.text, "dispatcher_deliveries_total")
    ledger = _reasons(server, notification_id)
    assert sum(ledger.values()) == RECIPIENTS * 3
    assert {(dict(k)["channel"], dict(k)["status"], dict(k)["reason"]): v
            for k, v in deliveries.items()} == ledger
    for channel, by_status in counts.items():  # and the summary agrees too
        for status in ("sent", "failed", "skipped"):
            assert by_status[status] == sum(v for (c, s, _), v in ledger.items()
                                            if (c, s) == (channel, status))
    third = RECIPIENTS // 3
    assert ledger == {(c, "failed", "template_error"): third for c in ("in_app", "email", "sms")} | {
        ("in_app", "sent", ""): 2 * third, ("sms", "sent", ""): third,
        ("email", "skipped", "no_contact"): 2 * third, ("sms", "skipped", "no_contact"): third}

    # Both processes delivered (the child's counts reached the parent's /metrics).
    pids = {line["process"] for line in _json_lines(server)
            if line.get("logger") == "dispatcher.worker" and line["message"].startswith("delivered")}
    assert len(pids) == 2, pids

    # One provider call per SMS sent, timed; one sample per chunk; the queue is empty.
    provider = _samples(response.text, "dispatcher_provider_request_seconds_count")
    assert provider == {(("channel", "sms"),): third}
    assert _samples(response.text, "dispatcher_chunk_seconds_bucket")[(("le", "+Inf"),)] == RECIPIENTS // 20
    queue = _samples(response.text, "dispatcher_queue_messages")
    assert queue[(("state", "visible"),)] == 0 and queue[(("state", "in_flight"),)] == 0
    requests = _samples(response.text, "dispatcher_http_requests_total")
    route = "/v1/notifications/{notification_id}"
    assert requests[(("method", "GET"), ("route", route), ("status", "200"))] >= 1
    assert not any(dict(k)["route"].startswith("/v1/notifications/app#") for k in requests)

    # The sample dashboard asks only for series this /metrics has.
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"dispatcher_\w+", target["expr"])}
    assert len(queried) >= 6
    missing = [name for name in queried if not re.search(rf"^{name}[{{ ]", response.text, re.M)]
    assert missing == []


def test_json_logs_carry_the_request_id_and_warn_of_each_failed_delivery(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path,
        wait_until: Callable[..., Any]) -> None:
    server = start_server(_env(dispatcher_env, tmp_path, processes=1))
    with server.client() as client:
        given = client.get("/v1/templates", headers={"X-Request-ID": "trace-42.a"})
        made = client.get("/v1/templates", headers={"X-Request-ID": "x" * 500})  # not sane: replaced
    assert given.headers["x-request-id"] == "trace-42.a"
    generated = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    notification_id = _send_bulk(server, 4)
    wait_until(_settled(server, notification_id), timeout=60, what="every row to be final")

    lines = wait_until(lambda: [line for line in _json_lines(server)
                                if line["level"] == "WARNING" and line.get("reason")] and _json_lines(server),
                       timeout=30, what="the failed deliveries' warnings")
    access = [line for line in lines if line["logger"] == "dispatcher.access"]
    assert {"method": "GET", "route": "/v1/templates", "status": 200, "request_id": "trace-42.a"}.items() \
        <= next(a for a in access if a.get("request_id") == "trace-42.a").items()
    assert any(a.get("request_id") == generated for a in access)
    assert all("duration_ms" in a for a in access)
    warnings = [line for line in lines if line["level"] == "WARNING" and line.get("reason")]
    assert sorted((w["user_id"], w["channel"], w["reason"]) for w in warnings) == [
        (user, channel, "template_error") for user in ("u0", "u3") for channel in ("email", "in_app", "sms")]
    assert all(w["notification_id"] == notification_id for w in warnings)
    assert all("account_code" in w["detail"] for w in warnings)


def test_a_worker_of_its_own_serves_its_metrics_on_its_port(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path,
        wait_until: Callable[..., Any]) -> None:
    """Gateway and workers apart: the worker's deliveries are on DISPATCHER_METRICS_PORT."""
    env = _env(dispatcher_env, tmp_path, processes=1)
    gateway = start_server(env, "gateway")
    port = free_port()
    start_server({**env, "DISPATCHER_METRICS_PORT": str(port)}, "worker")
    notification_id = _send_bulk(gateway, 6)
    wait_until(_settled(gateway, notification_id), timeout=60, what="every row to be final")

    def worker_counts() -> dict[tuple[tuple[str, str], ...], float] | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
        found = _samples(text, "dispatcher_deliveries_total")
        return found if sum(found.values()) == 18 else None  # the last outcomes may lag the ledger

    found = wait_until(worker_counts, timeout=30, what="the worker's metrics")
    assert {(dict(k)["channel"], dict(k)["status"], dict(k)["reason"]): v for k, v in found.items()} \
        == _reasons(gateway, notification_id)
    with gateway.client() as client:
        assert "dispatcher_deliveries_total{" not in client.get("/metrics").text  # not the gateway's
