"""What the API tells operators, in-process: ``X-Request-ID`` on every answer, ``/metrics`` by
route template, and its optional token (the multi-process half is tests/e2e/test_metrics_and_logs.py)."""

from __future__ import annotations

import dataclasses
import re

import httpx
from support import new_id, path_id

from dispatcher.api import create_app
from dispatcher.runtime import Runtime


async def test_a_sane_request_id_comes_back_and_any_other_is_replaced(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz", headers={"X-Request-ID": "abc-123:x.y_z"})).headers[
        "x-request-id"] == "abc-123:x.y_z"
    for insane in ("a b", "x" * 129, "\u00fcn\u00ef".encode(), ""):
        answer = (await client.get("/healthz", headers={"X-Request-ID": insane})).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", answer), insane
    first, second = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(2)]
    assert first != second
    refused = await client.post("/v1/notifications", content=b"x" * 3_000_000,
                                headers={"X-Request-ID": "too-big"})  # answered before routing
    assert (refused.status_code, refused.headers["x-request-id"]) == (413, "too-big")


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    notification_id = new_id()
    assert (await client.get(f"/v1/notifications/{path_id(notification_id)}")).status_code == 404
    await client.get("/no/such/page")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'dispatcher_http_requests_total\{method="GET",'
                     r'route="/v1/notifications/\{notification_id\}",status="404"\} [1-9]', text)
    assert re.search(r'dispatcher_http_requests_total\{method="GET",route="unmatched",status="404"\}', text)
    assert notification_id not in text and "/no/such/page" not in text
    assert "dispatcher_queue_messages{state=\"visible\"}" in text


async def test_metrics_count_every_request_of_a_route_again(client: httpx.AsyncClient) -> None:
    """The counter and the histogram of one (method, route, status) go on counting: the
    children the gateway keeps per label set are the ones exposed."""
    def figures(text: str) -> tuple[float, float]:
        counted = re.search(r'dispatcher_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)',
                            text)
        timed = re.search(r'dispatcher_http_request_seconds_count\{method="GET",route="/healthz"\} (\S+)', text)
        return (float(counted.group(1)) if counted else 0.0, float(timed.group(1)) if timed else 0.0)

    before = figures((await client.get("/metrics")).text)
    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    after = figures((await client.get("/metrics")).text)
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3)


async def test_metrics_need_the_token_when_one_is_set(runtime: Runtime) -> None:
    guarded = dataclasses.replace(runtime, settings=runtime.settings.model_copy(
        update={"metrics_token": "scrape-me"}))
    transport = httpx.ASGITransport(app=create_app(guarded))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert (await client.get("/metrics", headers={"Authorization": "Bearer app-key"})).status_code == 401
        allowed = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert allowed.status_code == 200 and "dispatcher_http_requests_total" in allowed.text
