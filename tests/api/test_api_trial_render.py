"""The gateway's trial render: on the event loop under a few milliseconds' cap, and in a thread
when a template takes longer, with the same answer either way; a request like one that passed
is not rendered again, and that never lets through one that fails (dispatcher.fan_out)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from support import new_id, path_id

from dispatcher.config import Settings
from dispatcher.runtime import Runtime

# Half a million empty steps: tens of milliseconds, past the 5 ms cap, well within the budget.
SLOW = "{% for i in range(50) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
TEMPLATES = {
    "quick/default/sms.txt": "{{ app_name }} is ready",
    "slow/default/sms.txt": SLOW + "{{ app_name }} is ready",
    "slow_broken/default/sms.txt": SLOW + "{{ app_name.missing.deeper }}",
    # Fails for count 0 only; the example is what a reload's check renders.
    "divide/default/sms.txt": "{{ app_name }}: {{ 100 // count }} each",
    "divide/template.json": '{"example": {"data": {"app_name": "Maps", "count": 1}}}',
}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The suite's settings (and so its ``runtime`` and ``client``) with these templates."""
    root = tmp_path / "templates"
    for relative, text in TEMPLATES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    return settings.model_copy(update={"templates_dir": root})


@pytest.mark.parametrize("template", ["quick", "slow"])
async def test_a_template_is_accepted_whether_its_trial_render_is_quick_or_slow(
        client: httpx.AsyncClient, template: str) -> None:
    nid = new_id()
    r = await client.post("/v1/notifications", json={
        "id": nid, "recipients": ["u1"], "template": template, "channels": ["sms"],
        "data": {"app_name": "Maps"}})
    assert r.status_code == 202, r.text
    assert (await client.get(f"/v1/notifications/{path_id(nid)}")).status_code == 200


async def test_a_slow_template_that_fails_is_a_422_naming_the_data(client: httpx.AsyncClient) -> None:
    nid = new_id()
    r = await client.post("/v1/notifications", json={
        "id": nid, "recipients": ["u1"], "template": "slow_broken", "channels": ["sms"],
        "data": {"app_name": "Maps"}})
    assert r.status_code == 422
    error = r.json()["error"]
    assert "can't be rendered" in error["message"] and "sms.txt" in error["message"], error
    assert (await client.get(f"/v1/notifications/{path_id(nid)}")).status_code == 404


async def _send(client: httpx.AsyncClient, template: str, data: dict[str, object]) -> httpx.Response:
    return await client.post("/v1/notifications", json={
        "id": new_id(), "recipients": ["u1"], "template": template, "channels": ["sms"],
        "data": data})


async def test_data_that_passed_before_passes_and_data_that_fails_still_fails(
        client: httpx.AsyncClient) -> None:
    """The second request with the same data is answered from what passed (PassedTrials);
    other values of what the part reads are rendered, and fail as they should."""
    for count, status in [(4, 202), (4, 202), (0, 422), (5, 202), (0, 422), (4, 202)]:
        r = await _send(client, "divide", {"app_name": "Maps", "count": count})
        assert r.status_code == status, (count, r.text)
        if status == 422:
            assert "divide" in r.json()["error"]["message"], r.text


async def test_a_template_reload_forgets_what_passed(client: httpx.AsyncClient, runtime: Runtime,
                                                    settings: Settings) -> None:
    assert (await _send(client, "divide", {"app_name": "Maps", "count": 2})).status_code == 202
    for other in ("quick", "slow", "slow_broken"):  # no example: a reload's check refuses them
        shutil.rmtree(settings.templates_dir / other)
    # The new version fails for count 2, which passed with the old one.
    (settings.templates_dir / "divide" / "default" / "sms.txt").write_text(
        "{{ app_name }}: {{ 100 // (count - 2) }} each", encoding="utf-8")
    runtime.templates.reload()
    r = await _send(client, "divide", {"app_name": "Maps", "count": 2})
    assert r.status_code == 422, r.text
    assert (await _send(client, "divide", {"app_name": "Maps", "count": 1})).status_code == 202
