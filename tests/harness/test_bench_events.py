"""``python -m bench events`` runs (small N), so it cannot rot; its figures live in docs/."""

from __future__ import annotations

from bench.events import measure
from bench.workloads import BAD_EMAIL_EVERY


def test_the_events_benchmark_times_a_bulk_alone_and_during_a_burst() -> None:
    report = measure(200, 300, rounds=1, concurrency=8)
    [row] = report["rounds"]
    valid = 200 - 200 // BAD_EMAIL_EVERY
    assert row["sent_alone"] == row["sent_during"] == valid
    assert row["event_answers"] == {"200": 300}  # every signed event was verified and applied
    assert row["ratio"] == report["median_ratio"] > 0
    assert row["burst_client_cpu_ms_per_event"] > 0 and row["cpu_seconds_during"]["serve"] > 0
    assert "serve-workers" in row["cpu_seconds_during"]  # serve's own worker processes count too
    assert 0 <= row["events_during_bulk"] <= 300
