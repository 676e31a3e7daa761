"""A client generated from the live ``/openapi.json`` (openapi-python-client, as an integrator
would run it) works against a live ``dispatcher serve``: a send, a status read and a feed read,
each parsed into the typed models the document declares, and an error parsed as the envelope.

The client is generated into the test's ``tmp_path`` and imported from there; it is told to
raise on any status the document does not declare.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from e2e.conftest import Server

PACKAGE = "generated_dispatcher_client"
API_KEY = "appkey"  # e2e.conftest.API_KEY


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Callable[[str], ModuleType]]:
    """``generated(server_url)``: generate the client package from the server's document;
    returns a loader of its modules (``load("api.notifications.send_notification")``)."""
    def generate(url: str) -> ModuleType:
        spec = tmp_path / "openapi.json"
        spec.write_bytes(httpx.get(f"{url}/openapi.json", trust_env=False).content)
        bin_dir = Path(sys.executable).parent  # its formatter (ruff) is beside it
        run = subprocess.run(
            [str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
             "--output-path", str(tmp_path / PACKAGE)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Warning" not in run.stdout, run.stdout  # every schema understood
        sys.path.insert(0, str(tmp_path))
        return importlib.import_module(PACKAGE)

    yield generate
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_sends_reads_the_status_and_the_feed(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server],
        generated: Callable[[str], ModuleType], wait_until: Callable[..., Any],
        user_token: Callable[[str], str]) -> None:
    server = start_server(dispatcher_env)
    client_module = generated(server.url)
    models = _api("models")
    service = client_module.AuthenticatedClient(base_url=server.url, token=API_KEY,
                                                raise_on_unexpected_status=True)
    notification_id = f"app#{uuid.uuid4()}"

    body = models.NotificationIn(
        id=notification_id, recipients=["gen-user"], template="app-install",
        data=models.NotificationInData.from_dict({"app_name": "Generated"}), state="completed",
        channels=[models.NotificationInChannelsType0Item.IN_APP])
    accepted = _api("api.notifications.send_notification").sync(client=service, body=body)
    assert isinstance(accepted, models.AcceptedOut)
    assert (accepted.id, accepted.accepted) == (notification_id, 1)

    get_notification = _api("api.notifications.get_notification")

    def in_app_sent() -> Any:
        status = get_notification.sync(client=service, notification_id=notification_id)
        assert isinstance(status, models.NotificationOut)
        return status if status.counts["in_app"].sent == 1 else None

    status = wait_until(in_app_sent, timeout=60, what="the in-app row to be sent")
    assert status.template == "app-install" and status.recipients == 1
    assert status.created_at.tzinfo is not None  # a date-time, parsed

    user = client_module.AuthenticatedClient(base_url=server.url, token=user_token("gen-user"),
                                             raise_on_unexpected_status=True)
    feed = _api("api.feed.list_feed").sync(client=user, user_id="gen-user")
    assert isinstance(feed, models.FeedPage)
    assert feed.unread_count == 1
    [entry] = feed.items
    assert entry.id == notification_id and "Generated" in entry.body

    # An error is the declared envelope, parsed as such, with its status.
    refused = _api("api.notifications.send_notification").sync_detailed(client=service, body=models.NotificationIn(
        id="not-an-id", recipients=["gen-user"], template="app-install"))
    assert refused.status_code == 400
    assert isinstance(refused.parsed, models.ErrorOut)
    assert refused.parsed.error.code == "invalid_id"
