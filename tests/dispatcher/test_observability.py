"""The observability helpers on their own: the metrics directory ``serve`` prepares, and the
log formats (the live behaviour is tests/e2e/test_metrics_and_logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher.model import DeliveryStatus, Reason, RowKey, RowState
from dispatcher.observability import logs

PREPARE = "from dispatcher.observability.metrics import prepare_multiprocess; print(prepare_multiprocess())"


def _prepare(tmp_path: Path, **env: str) -> Path:
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    run = subprocess.run([sys.executable, "-c", PREPARE], env={**base, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    return Path(run.stdout.strip())


def test_a_given_directory_is_emptied_of_an_earlier_runs_samples(tmp_path: Path) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_4242.db").write_bytes(b"old samples")
    assert _prepare(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(given)) == given
    assert list(given.iterdir()) == []


def test_without_one_a_fresh_directory_is_made_and_dead_runs_ones_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"dispatcher-metrics-{gone.pid}-abc"
    recent = tmp_path / f"dispatcher-metrics-{gone.pid}-ghi"  # its worker processes may still write
    alive = tmp_path / f"dispatcher-metrics-{os.getpid()}-def"
    hours_ago = time.time() - 7200
    for folder in (dead, recent, alive):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"samples")
    for folder in (dead, alive):
        for path in (folder / "counter_1.db", folder):
            os.utime(path, (hours_ago, hours_ago))
    made = _prepare(tmp_path, TMPDIR=str(tmp_path))
    assert made.parent == tmp_path and made.name.startswith("dispatcher-metrics-") and made.is_dir()
    assert not dead.exists() and recent.exists() and alive.exists()


def test_a_sample_that_cant_be_written_never_stops_the_work(tmp_path: Path) -> None:
    """The directory removed under a running process: counting fails, quietly; the caller goes on."""
    script = (
        "import shutil\n"
        "from dispatcher.observability.metrics import prepare_multiprocess, deliveries, http_request\n"
        "from dispatcher.model import DeliveryStatus, RowKey, RowState\n"
        "shutil.rmtree(prepare_multiprocess())\n"
        "deliveries([RowState(RowKey('app#1', 'u1', 'sms'), DeliveryStatus.SENT)])\n"
        "http_request('GET', '/healthz', 200, 0.001)\n"
        "print('went on')\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout.strip()) == (0, "went on"), run.stderr
    assert "metrics: 1 sample(s) lost" in run.stderr


def _record(message: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dispatcher.test", logging.WARNING, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_context_and_the_lines_own_fields() -> None:
    async def in_a_request() -> str:
        logs.bind(request_id="r-1", user_id="u1")
        return logs.JsonFormatter().format(_record(reason="no_contact"))

    line = json.loads(asyncio.run(in_a_request()))
    assert line["message"] == "hello" and line["level"] == "WARNING" and line["logger"] == "dispatcher.test"
    assert (line["request_id"], line["user_id"], line["reason"]) == ("r-1", "u1", "no_contact")
    assert line["time"].endswith("Z") and line["process"] == os.getpid()
    assert "request_id" not in json.loads(logs.JsonFormatter().format(_record()))  # that task's only


def test_an_exception_is_one_json_line_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def test_a_batch_lists_its_chunks_and_notifications_boundedly() -> None:
    async def in_a_batch() -> dict[str, str]:
        logs.bind_batch([(str(i), f"app#{i % 12}") for i in range(30)])
        return logs.context()

    context = asyncio.run(in_a_batch())
    assert context["chunk"].startswith("0,1,2,") and context["chunk"].endswith(",…")
    assert len(context["notification_id"].split(",")) == 11  # ten ids, then "…"


def test_a_failed_row_is_a_warning_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    key = RowKey("app#1", "u1", "sms")
    with caplog.at_level(logging.WARNING, logger="dispatcher.delivery"):
        logs.failed_deliveries([RowState(key, DeliveryStatus.SENT),
                                RowState(key, DeliveryStatus.FAILED, Reason.PROVIDER_REJECTED, "blocked")])
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert (record.reason, record.channel, record.user_id, record.detail) == (  # type: ignore[attr-defined]
        "provider_rejected", "sms", "u1", "blocked")
