"""Critical categories bypass opt-outs, so only DISPATCHER_CRITICAL_SERVICES may send them:
given as ``category`` or as the template's default category (template.json)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import new_id

from dispatcher.api import create_app
from dispatcher.config import SHIPPED_TEMPLATES, Settings
from dispatcher.runtime import Runtime


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """The shipped templates plus ``password-reset``, whose default category is ``security``."""
    root = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, root)
    shutil.copytree(root / "app-install", root / "password-reset")
    (root / "password-reset" / "template.json").write_text(json.dumps({"category": "security"}))
    return root


@pytest.fixture
async def runtime(settings: Settings, templates: Path) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings.model_copy(update={
        "critical_categories": "security,fraud", "critical_services": "billing",
        "templates_dir": templates}))
    yield rt
    await rt.close()


@pytest.fixture
async def as_service(runtime: Runtime) -> AsyncIterator[Any]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        async def send(service: str, **fields: Any) -> httpx.Response:
            body = {"id": new_id(service), "recipients": ["u1"], "template": "app-install",
                    "data": {"app_name": "Foo"}, **fields}
            return await client.post("/v1/notifications", json=body,
                                     headers={"Authorization": f"Bearer {service}-key"})
        yield send


def test_by_default_no_service_may_send_a_critical_category() -> None:
    assert Settings().critical_services == frozenset()


@pytest.mark.parametrize("fields", [{"category": "security"}, {"category": "fraud"},
                                    {"template": "password-reset"}])
async def test_another_service_gets_403_forbidden_category(as_service: Any, fields: dict[str, Any]) -> None:
    r = await as_service("app", **fields)
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "forbidden_category" and "DISPATCHER_CRITICAL_SERVICES" in error["message"]


@pytest.mark.parametrize("fields", [{"category": "security"}, {"template": "password-reset"}])
async def test_a_critical_service_may_send_it(as_service: Any, fields: dict[str, Any]) -> None:
    assert (await as_service("billing", **fields)).status_code == 202


async def test_a_template_default_can_be_overridden_by_a_non_critical_category(as_service: Any) -> None:
    assert (await as_service("app", template="password-reset", category="account")).status_code == 202
    assert (await as_service("app", category="app")).status_code == 202
