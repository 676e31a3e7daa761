"""``python -m bench ratelimit`` runs (small N), so it cannot rot; its figures live in docs/."""

from __future__ import annotations

import pytest

from bench.ratelimit import measure
from bench.workloads import BAD_EMAIL_EVERY


def test_the_rate_limit_benchmark_reports_target_and_measured_rate() -> None:
    report = measure([200.0], 300, workers=2, unlimited=False)
    [run] = report["runs"]
    valid = 300 - 300 // BAD_EMAIL_EVERY  # the bench's users include a few invalid addresses
    assert (run["target"], run["messages"], run["sent"], run["arrived"]) == (200.0, 300, valid, valid)
    assert run["measured_rate"] > 0 and run["ratio"] == pytest.approx(run["measured_rate"] / 200, abs=0.01)
