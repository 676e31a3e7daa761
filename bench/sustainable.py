"""Stepped rates: the highest rate a contender sustains, and the gateway alone.

**The sustainable rate** (:func:`find_sustainable`): the small workload offered at a
series of rates, each for a short window, on one stack. A step passes when every request was
accepted, accept p99 < 50 ms, end-to-end p99 < 1 s (the notification and its update alike)
and the backlog did not grow: every row final within 2 s of the last scheduled send. The
answer is the highest step that passed. By default the rate doubles from 50 notifications/s
(50, 100, 200, 400, 800, 1,600) until a step fails, then bisects between the highest that
passed and the lowest that failed, on multiples of 50, until they are 50 apart: every
contender gets the same rule, and a fast one reaches its limit within the budget (the
stepping by 50 that came before spent two minutes below 400/s). A failed step's backlog is
drained (up to :data:`DRAIN_SECONDS`, outside its figures) before the next step, which must
not inherit it; one that does not drain ends the search. With explicit ``rates``, the steps
are those, in order, stopping at the first that fails. Either way the search also stops when
the time budget would be exceeded.

**The gateway alone** (:func:`gateway_alone`): ``dispatcher gateway`` on the embedded store
and queue, with no worker (the queue just fills), offered single-recipient notifications
(v1 only) open loop at rising rates: the highest rate with p99 < 50 ms, every request
accepted, and the client keeping up (accepted/s at least 95 % of the offer). The client
shares the machine's two cores with the gateway, so this is a floor for the gateway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.open_loop import Attempt, Offer, drive, run_async, small_plan
from bench.processes import ResourceMonitor
from bench.small import SmallResult, Target, percentile, run_small

if TYPE_CHECKING:
    from bench.small import DispatcherTarget
    from bench.standins import StandIns

__all__ = ["GatewayAlone", "GatewayStep", "RateSearch", "find_sustainable", "gateway_alone",
           "sustainable"]

#: The doubling search: its first step, its highest, and how close it gets.
FIRST_RATE, TOP_RATE, RESOLUTION = 50.0, 1600.0, 50.0
#: How long a failed step's backlog may take to drain before the next step.
DRAIN_SECONDS = 60.0
GATEWAY_RATES = (100, 250, 500, 1000, 1500, 2000, 3000, 4000)
ACCEPT_P99_MS = 50.0
E2E_P99_MS = 1000.0
SETTLE_SECONDS = 2.0
#: How long a step waits for its backlog after the offer: past the bar, long enough to say by
#: how much, short enough not to eat the budget.
STEP_SETTLE_TIMEOUT = 15.0
#: The update of the last notification comes up to 3 s after it; then a settle.
STEP_TAIL_SECONDS = 3.0 + SETTLE_SECONDS + 1.0


def sustainable(step: SmallResult) -> bool:
    """Every request accepted, both p99 bars met, and no backlog left after the offer."""
    return (step.errors == 0 and step.unsettled == 0 and step.settle_seconds is not None
            and step.settle_seconds <= SETTLE_SECONDS
            and _below(step.accept_p99_ms, ACCEPT_P99_MS)
            and _below(step.e2e_p99_ms, E2E_P99_MS) and _below(step.update_p99_ms, E2E_P99_MS))


def _below(value: float | None, bar: float) -> bool:
    return value is not None and value < bar


@dataclass
class RateSearch:
    contender: str
    window_seconds: float
    budget_seconds: float
    steps: list[SmallResult] = field(default_factory=list)
    stopped: str = ""                 # why the search ended

    @property
    def best(self) -> SmallResult | None:
        """The highest step that passed (steps stop at the first failure)."""
        passed = [s for s in self.steps if sustainable(s)]
        return max(passed, key=lambda s: s.rate) if passed else None


def find_sustainable(target: Target, standins: StandIns, user_ids: Sequence[str], *,
                     rates: Sequence[float] | None = None, window: float = 10.0,
                     budget: float = 180.0, seed: int = 1) -> RateSearch:
    """The highest rate ``target`` sustains: doubling then bisecting (``rates`` None), or
    the given steps in order until one fails; within ``budget`` seconds."""
    search = RateSearch(target.name, window, budget)
    started = time.monotonic()
    given = None if rates is None else iter(rates)  # the stepped search: what comes next
    passed: float | None = None
    failed: float | None = None
    rate = next_rate(passed, failed) if given is None else next(given, None)
    while rate is not None:
        if search.steps and time.monotonic() - started + window + STEP_TAIL_SECONDS > budget:
            search.stopped = f"time budget ({budget:.0f} s) before {rate:g}/s"
            return search
        # The step after this one if it fails (the stepped search ends there): its backlog
        # must drain first.
        after_failing = next_rate(passed, rate) if given is None else None
        step = run_small(target, standins, user_ids, rate=rate,
                         count=max(1, round(rate * window)), seed=seed + len(search.steps),
                         settle_timeout=STEP_SETTLE_TIMEOUT,
                         drain_timeout=DRAIN_SECONDS if after_failing is not None else 0.0)
        search.steps.append(step)
        if sustainable(step):
            passed = rate
            rate = next_rate(passed, failed) if given is None else next(given, None)
            continue
        failed = rate
        if after_failing is not None and step.settle_seconds is None and step.drained_after is None:
            search.stopped = (f"{rate:g}/s missed a bar, and its backlog did not drain "
                              f"within {DRAIN_SECONDS:.0f} s")
            return search
        rate = after_failing
    if failed is not None:
        search.stopped = f"{failed:g}/s missed a bar" + (
            f", {passed:g}/s passed ({RESOLUTION:g}/s apart)" if given is None and passed else "")
    else:
        search.stopped = "every rate passed" + (f", up to {TOP_RATE:g}/s" if given is None else "")
    return search


def next_rate(passed: float | None, failed: float | None) -> float | None:
    """The doubling search's next step, given the highest rate that passed and the lowest
    that failed so far; None when it is done."""
    if failed is None:
        rate = FIRST_RATE if passed is None else passed * 2
        return rate if rate <= TOP_RATE else None
    low = passed or 0.0
    if failed - low <= RESOLUTION:
        return None
    middle = round((low + failed) / 2 / RESOLUTION) * RESOLUTION
    return min(max(middle, low + RESOLUTION), failed - RESOLUTION)


# --- the gateway alone ----------------------------------------------------------------------

@dataclass
class GatewayStep:
    rate: float
    requests: int
    accepted: int
    errors: int
    accepted_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_ms_per_request: dict[str, float]      # the gateway, and the client beside it

    @property
    def passed(self) -> bool:
        return (self.errors == 0 and _below(self.p99_ms, ACCEPT_P99_MS)
                and self.accepted_per_second >= 0.95 * self.rate)


@dataclass
class GatewayAlone:
    window_seconds: float
    steps: list[GatewayStep] = field(default_factory=list)

    @property
    def best(self) -> GatewayStep | None:
        """The highest step below the first that missed (with ``keep_going`` more follow)."""
        best = None
        for step in self.steps:
            if not step.passed:
                break
            best = step
        return best


def gateway_alone(target: DispatcherTarget, *, rates: Sequence[float] = GATEWAY_RATES,
                  window: float = 5.0, budget: float = 90.0, keep_going: bool = False) -> GatewayAlone:
    """Rising rates of single-recipient v1 requests until p99 passes 50 ms (or the budget);
    ``keep_going``: every rate."""
    result = GatewayAlone(window)
    users = [f"u{i}" for i in range(1_000)]  # the gateway reads no user: any ids will do
    _gateway_step(target, small_plan(users, rate=200, count=200, seed=0, updates=False), 200)
    started = time.monotonic()
    for i, rate in enumerate(rates):
        if result.steps and time.monotonic() - started + window + 1 > budget:
            break
        plan = small_plan(users, rate=rate, count=round(rate * window), seed=i + 1, updates=False)
        step = _gateway_step(target, plan, rate)
        result.steps.append(step)
        if not step.passed and not keep_going:
            break
    return result


def _gateway_step(target: DispatcherTarget, plan: list[Offer], rate: float) -> GatewayStep:
    async def offer() -> tuple[float, list[Attempt]]:
        async with target.submitter() as submit:
            return await drive(plan, submit)

    with ResourceMonitor({"gateway": target.stack.gateway.pid, "client": os.getpid()}) as monitor:
        epoch, attempts = run_async(offer())
    latencies = [a.latency * 1000 for a in attempts if a.accepted]
    answered = max((a.answered_at for a in attempts), default=epoch)
    return GatewayStep(rate, len(plan), len(latencies), len(attempts) - len(latencies),
                       len(latencies) / max(answered - epoch, 1e-9),
                       percentile(latencies, 0.5), percentile(latencies, 0.99),
                       {n: 1000 * s / len(plan) for n, s in monitor.cpu_seconds.items()})
