"""``python -m bench run`` at a tiny size, every contender included, so the harness cannot rot.

It asserts what the harness must get right, not speed: every contender delivered, the
stand-ins received exactly what the dispatcher's ledger says it sent, and the report, table
and chart were written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dispatcher.cpu_quota import available_cpus


def test_the_whole_harness_runs_at_a_small_size(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--recipients", "150", "--runs", "1",
         "--apprise-recipients", "15", "--inapp-recipients", "300", "--sizes", "",
         "--small-users", "40", "--small-rate", "20", "--small-seconds", "1",
         "--small-budget", "1", "--small-step-seconds", "1", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench-results.json").read_text())
    [round_] = report["rounds"]
    for contender in ("embedded", "production_1", "production_2"):
        result = round_[contender]
        assert result["failed"] == 0, contender
        assert result["sent"]["in_app"] == 150, contender
        for channel in ("email", "sms", "push"):
            assert result["arrived"][channel] == result["sent"][channel] > 0, (contender, channel)
    # The peak RSS covers serve's worker processes, where the recipients are planned and sent.
    rss = round_["embedded"]["peak_rss_mb"]
    assert set(rss) == {"serve"} | {f"serve-worker-{i + 1}" for i in range(available_cpus())}, rss
    assert all(mb > 10 for mb in rss.values()), rss
    assert round_["celery"]["deliveries"] > 0 and round_["celery"]["errors"] == 0
    assert round_["apprise"]["deliveries"] == 45
    assert report["inapp"]["sent"]["in_app"] == 300
    small = report["small"]
    assert set(small["contenders"]) == {"embedded", "production_1", "production_2", "celery"}
    for name, contender in small["contenders"].items():
        [fixed] = contender["runs"]
        assert (fixed["errors"], fixed["unsettled"]) == (0, 0), name
        assert fixed["sent"]["update_push"] == fixed["notifications"] == 20, name
        assert contender["search"]["steps"], name
    assert small["gateway_alone"]["steps"]
    assert (out / "deliveries.png").stat().st_size > 0
    written = (out / "BENCHMARKS.md").read_text()
    assert "| figure | bar |" in written and "### Small traffic" in written
