"""The API reference pages in Chromium, offline: every request to any other host is refused,
and still Swagger UI lists the operations, takes a key through *Authorize* and runs an
operation with it (*Try it out*), and ReDoc renders the reference."""

from __future__ import annotations

import re
from typing import Any

from live import API_KEY, LiveServer
from playwright.sync_api import expect


def _offline(page: Any, server: LiveServer) -> list[str]:
    """Refuse every request that is not to the server; return the list of those refused."""
    refused: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith((server.url, "data:", "blob:")):
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort()

    page.route("**/*", route)
    return refused


def test_swagger_ui_works_offline_and_try_it_out_uses_the_key(page: Any, server: LiveServer) -> None:
    refused = _offline(page, server)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock").count() >= 15

    page.locator("button.authorize").first.click()
    page.locator(".modal-ux input[type=text], .modal-ux input[type=password]").first.fill(API_KEY)
    page.locator(".modal-ux button.authorize").click()
    page.locator(".modal-ux button.btn-done").click()

    operation = page.locator("#operations-templates-list_templates")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tr.response .response-col_status").first
    expect(status).to_have_text(re.compile(r"^\s*200"))
    expect(operation.locator(".live-responses-table")).to_contain_text("app-install")
    assert refused == []


def test_redoc_renders_the_reference_offline(page: Any, server: LiveServer) -> None:
    refused = _offline(page, server)
    page.goto(f"{server.url}/redoc")
    expect(page.get_by_role("heading", name="Send Notification").first).to_be_visible()
    expect(page.get_by_text("Authorizations:").first).to_be_attached()  # the bearer scheme
    assert refused == []
