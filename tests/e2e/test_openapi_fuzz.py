"""Schemathesis against a live ``dispatcher gateway``: cases generated from the /openapi.json
it serves, sent over HTTP with a service key; none may be answered with a 5xx, and every
answer must be one the document declares: its status, its content type, its headers, and a
body that matches the declared schema (the typed response models, the one error envelope).

Bounded: ``MAX_EXAMPLES`` cases per operation (a few hundred in all, derandomised so a run is
repeatable), no shrinking, 10 s per request. The gateway runs with DISPATCHER_PUBLIC_URL set,
so the unsubscribe pages are fuzzed too. Schemathesis' pytest plugin (``from_fixture``) does
not run under pytest 9, so the operations are driven through Hypothesis directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

if TYPE_CHECKING:
    from e2e.conftest import Server

MAX_EXAMPLES = 30  # x 19 operations: ~570 cases, ~10 s
SERVICE_KEY = "appkey"  # e2e.conftest.API_KEY
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


def _fuzz(operation: Any, base_url: str) -> list[str]:
    """Run one operation's cases; the 5xx and undocumented answers found, as readable lines."""
    failures: list[str] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def run(case: Any) -> None:
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        if operation.path.endswith("/stream"):  # the live stream (SSE) never ends: status only
            kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
            with requests.request(**kwargs, stream=True, timeout=10) as response:
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")
            return
        try:
            case.call_and_validate(base_url=base_url, headers=headers,
                                   checks=CHECKS, timeout=10)
        except (AssertionError, FailureGroup) as exc:  # one failure, or several at once
            failures.append(f"{case.method} {case.formatted_path}: {_first_failure(exc)}")

    run()
    return failures


def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(dispatcher_env: dict[str, str],
                                         start_server: Callable[..., Server]) -> None:
    dispatcher_env["DISPATCHER_PUBLIC_URL"] = "https://notify.example.com"
    gateway = start_server(dispatcher_env, "gateway")
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every router is in the document
    failures = [line for operation in operations for line in _fuzz(operation, gateway.url)]
    assert not failures, "\n".join(failures) + "\n\ngateway log:\n" + gateway.output()[-3000:]


def _first_failure(exc: BaseException) -> str:
    """The failure's title and its first lines of detail (a group: its first failure)."""
    if isinstance(exc, FailureGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines[:4])
