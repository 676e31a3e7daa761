"""``python -m bench scaleout``: what each process spends per delivery on the production stack,
with 1 and 2 worker processes, and a check of the model that follows with pinned CPUs.

The production stack (``dispatcher gateway`` + W ``dispatcher worker`` on PostgreSQL, SQS on
bench.sqs_standin or moto_server, Redis) sends the mixed bulk (``--recipients``, all four
channels) to the provider stand-ins. Per run, CPU seconds per 1,000 email+SMS+push
deliveries of: the workers, the gateway, the database (the PostgreSQL backends serving the
bench's database), the queue (the SQS server), Redis and the stand-ins. Then, from the W=1 and W=2 figures:

* the workers' scaling efficiency: worker CPU per delivery with 1 worker / with 2 (1.0: a
  second worker costs nothing extra per delivery);
* the model: one PostgreSQL of N cores supports about N / (database CPU per delivery)
  deliveries/s before it is the bottleneck, and W workers about W / (worker CPU per delivery);
* ``--pinned``: a last run with the workers on CPU 1 and everything else on CPU 0
  (``os.sched_setaffinity``, the same as ``taskset``; the local PostgreSQL's backends are
  pinned while the run lasts and set free after), whose measured rate is compared with the
  model's prediction for that split.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import psutil

from bench.harness import Options
from bench.processes import PostgresBackends, redis_server_pid
from bench.standins import StandIns
from bench.workloads import run_mixed, seed, start_stack, stop_stack, users

__all__ = ["measure"]


def _postgres_postmaster() -> psutil.Process | None:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if proc.info["name"] in ("postgres", "postmaster") and ("-D" in cmd or "config_file" in cmd):
            return proc
    return None


def _one(standins: StandIns, opts: Options, n: int, workers: int, pinned: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as folder:
        stack = start_stack("production", standins, Path(folder), workers=workers,
                            postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
        freed: list[tuple[psutil.Process, list[int]]] = []
        try:
            people = users(n)
            seed(stack.database_url, people)
            database = stack.database_url.rpartition("/")[2]
            also = {"stand-ins": standins.pid}
            queue = next((p for p in stack.processes if p.name in ("moto_server", "sqs_standin")), None)
            if queue is not None:
                also[f"queue ({queue.name})"] = queue.pid
            redis_pid = redis_server_pid(opts.redis_url)
            if redis_pid:
                also["redis"] = redis_pid
            if pinned:
                freed = _pin(stack, also)
            result = run_mixed(stack, standins, people, update=False, also=also,
                               groups={"database": PostgresBackends(opts.postgres_admin_url, database)})
        finally:
            for proc, cpus in freed:
                try:
                    proc.cpu_affinity(cpus)
                except psutil.Error:
                    pass
            stop_stack(stack, opts.postgres_admin_url)
    deliveries = sum(result.arrived.values())
    per_k = {name: round(cpu / deliveries * 1000, 3) for name, cpu in result.cpu_seconds.items()}
    worker_cpu = sum(cpu for name, cpu in result.cpu_seconds.items() if name.startswith("worker"))
    return {"workers": workers, "pinned": pinned, "deliveries": deliveries,
            "seconds": round(result.seconds, 2), "per_second": round(deliveries / result.seconds, 1),
            "cpu_seconds_per_1000": per_k,
            "workers_cpu_per_1000": round(worker_cpu / deliveries * 1000, 3),
            "machine_cpu_per_1000": round(result.machine_cpu_seconds / deliveries * 1000, 3)}


def _pin(stack: Any, also: dict[str, int]) -> list[tuple[psutil.Process, list[int]]]:
    """Workers on CPU 1; the gateway, PostgreSQL (its postmaster and backends), the SQS server,
    Redis and the stand-ins on CPU 0. Returns what to set free afterwards."""
    freed: list[tuple[psutil.Process, list[int]]] = []

    def pin(proc: psutil.Process, cpu: int) -> None:
        try:
            before = proc.cpu_affinity()
            proc.cpu_affinity([cpu])
            freed.append((proc, before))
        except psutil.Error:
            pass

    for p in stack.processes:
        pin(psutil.Process(p.pid), 1 if p.name.startswith("worker") else 0)
    for pid in also.values():
        pin(psutil.Process(pid), 0)
    postmaster = _postgres_postmaster()
    if postmaster is not None:
        pin(postmaster, 0)
        for child in postmaster.children(recursive=True):
            pin(child, 0)
    return freed


def measure(n: int, *, pinned: bool = True) -> dict[str, Any]:
    opts = Options()
    out: dict[str, Any] = {"recipients": n, "runs": []}
    with StandIns() as standins:
        for workers in (1, 2):
            out["runs"].append(_one(standins, opts, n, workers, pinned=False))
            print(out["runs"][-1], flush=True)
        one, two = out["runs"]
        out["scaling_efficiency"] = round(one["workers_cpu_per_1000"] / two["workers_cpu_per_1000"], 3)
        db = two["cpu_seconds_per_1000"].get("database", 0.0) / 1000  # s per delivery
        worker = two["workers_cpu_per_1000"] / 1000
        rest = sum(v for k, v in two["cpu_seconds_per_1000"].items()
                   if not k.startswith("worker")) / 1000
        out["model"] = {
            "database_cpu_ms_per_delivery": round(db * 1000, 3),
            "worker_cpu_ms_per_delivery": round(worker * 1000, 3),
            "deliveries_per_second_per_database_core": round(1 / db) if db else None,
            "deliveries_per_second_per_worker_core": round(1 / worker) if worker else None,
            # the pinned split: workers alone on one core, everything else on the other
            "pinned_prediction_per_second": round(min(1 / worker, 1 / rest)) if worker and rest else None,
        }
        if pinned:
            out["runs"].append(_one(standins, opts, n, 1, pinned=True))
            print(out["runs"][-1], flush=True)
            predicted = out["model"]["pinned_prediction_per_second"]
            out["pinned_measured_per_second"] = out["runs"][-1]["per_second"]
            out["pinned_measured_vs_model"] = (round(out["runs"][-1]["per_second"] / predicted, 3)
                                               if predicted else None)
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(measure(int(os.environ.get("N", "10000"))), indent=2))
