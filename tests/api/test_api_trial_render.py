"""The gateway's trial render: on the event loop under a few milliseconds' cap, and in a thread
when a template takes longer, with the same answer either way (dispatcher.fan_out)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import new_id, path_id

from dispatcher.config import Settings

# Half a million empty steps: tens of milliseconds, past the 5 ms cap, well within the budget.
SLOW = "{% for i in range(50) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
TEMPLATES = {
    "quick/default/sms.txt": "{{ app_name }} is ready",
    "slow/default/sms.txt": SLOW + "{{ app_name }} is ready",
    "slow_broken/default/sms.txt": SLOW + "{{ app_name.missing.deeper }}",
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
