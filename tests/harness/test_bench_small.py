"""The small workload (``python -m bench small``) runs at a tiny size, so it cannot rot.

Real parts only: the dispatcher's ``serve`` (embedded), its gateway and a worker apart on the
same SQLite store (``split_1``), or a Celery worker subprocess on the
real Redis and PostgreSQL, the provider stand-ins in their own process. It asserts what the
harness must get right, never speed: every notification and its update reached a final row,
the stand-ins received exactly what the ledger says was sent, and the report has every field.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import require_redis_and_postgres

from bench.open_loop import small_plan
from bench.peers.celery_peer import DEFAULT_BROKER_URL
from bench.small import SmallResult, percentile
from dispatcher.cpu_quota import available_cpus

ROOT = Path(__file__).resolve().parents[2]
USERS, RATE = 30, 20
FIELDS = {f.name for f in dataclasses.fields(SmallResult)} | {"sustainable"}
PROCESSES = {
    # serve's worker processes: one per CPU it may use
    "embedded": {"serve", "stand-ins", "client"} | {f"serve-worker-{i + 1}" for i in range(available_cpus())},
    "split_1": {"gateway", "worker-1", "stand-ins", "client"},
    "celery": {"celery-main", "celery-pool-1", "celery-pool-2", "redis", "postgres", "stand-ins",
               "client"},
}


def _require_celery_servers() -> None:
    require_redis_and_postgres(DEFAULT_BROKER_URL)


def _run_small(contender: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    out = tmp_path / "small.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "small", "--contenders", contender,
         "--users", str(USERS), "--rate", str(RATE), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [run] = json.loads(out.read_text())["contenders"][contender]["runs"]
    return run, done.stdout


@pytest.mark.parametrize("contender", ["embedded", "split_1", "celery"])
def test_every_notification_and_update_settles_and_the_standins_agree_with_the_ledger(
        contender: str, tmp_path: Path) -> None:
    if contender == "celery":
        _require_celery_servers()

    run, printed = _run_small(contender, tmp_path)

    # The report has every field, and a CPU figure for each of the contender's processes.
    assert set(run) == FIELDS
    assert set(run["cpu_ms_per_delivery"]) == PROCESSES[contender]
    assert "| contender | offered notif./s" in printed

    # Every user got its notification and its update; each was accepted and settled.
    assert (run["notifications"], run["requests"]) == (USERS, 2 * USERS)
    assert (run["accepted"], run["errors"], run["unsettled"]) == (2 * USERS, 0, 0)
    assert run["settle_seconds"] is not None
    # Four final rows per notification and one for its update's push (a v1 push row an update
    # took over before the harness saw it is one row, counted as superseded).
    assert run["rows"] + run["superseded_push"] == 5 * USERS
    assert run["sent"]["update_push"] == USERS

    # The stand-ins received exactly what the ledger says was sent.
    sent, arrived = run["sent"], run["arrived"]
    assert (arrived["email"], arrived["sms"]) == (sent["email"], sent["sms"])
    pushes = sent["push"] + sent["update_push"]
    assert pushes <= arrived["push"] <= pushes + run["superseded_push"]
    assert run["deliveries"] == sum(sent.values()) > 0


def test_the_plan_offers_every_user_once_and_each_update_one_to_three_seconds_later() -> None:
    users = [f"u{i}" for i in range(50)]

    plan = small_plan(users, rate=25, count=50, seed=7)

    firsts = [o for o in plan if not o.update]
    updates = {o.notification_id: o for o in plan if o.update}
    assert sorted(o.user_id for o in firsts) == sorted(users)
    assert [o.at for o in plan] == sorted(o.at for o in plan)
    assert [o.at for o in sorted(firsts, key=lambda o: o.at)] == [i / 25 for i in range(50)]
    for first in firsts:
        update = updates[first.notification_id]
        assert update.user_id == first.user_id and 1.0 <= update.at - first.at <= 3.0
    assert [(o.at, o.user_id) for o in plan] == [
        (o.at, o.user_id) for o in small_plan(users, rate=25, count=50, seed=7)]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (
        50.0, 99.0, None)


@pytest.mark.parametrize("limit", [30.0, 75.0, 150.0, 220.0, 537.0, 999.0, 1600.0, 5000.0])
def test_the_rate_search_finds_the_highest_multiple_of_50_a_contender_sustains(limit: float) -> None:
    """Doubling from 50/s, then bisecting: a contender that sustains any rate up to
    ``limit`` is found at the highest multiple of 50 up to it (capped at the top rate),
    never offered a rate above one it failed, in a handful of steps."""
    from bench.sustainable import FIRST_RATE, TOP_RATE, next_rate

    passed: float | None = None
    failed: float | None = None
    offered: list[float] = []
    while (rate := next_rate(passed, failed)) is not None:
        assert failed is None or rate < failed
        offered.append(rate)
        if rate <= limit:
            passed = rate
        else:
            failed = rate
    expected = min(limit // 50 * 50, TOP_RATE) if limit >= FIRST_RATE else None
    assert passed == expected
    assert len(offered) <= 11 and len(set(offered)) == len(offered)
