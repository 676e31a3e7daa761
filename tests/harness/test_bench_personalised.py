"""The personalised mixed workload (``python -m bench run``'s ``personalised`` contender) at a
tiny size on the embedded stack: every recipient's email, SMS and push rendered with its name
reach the stand-ins, none fails, and the benchmark's template passes the check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.harness import Options, _mixed
from bench.standins import StandIns
from bench.workloads import PERSONAL_TEMPLATE, templates_folder

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_templates_pass_the_check(tmp_path: Path) -> None:
    folder = templates_folder(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dispatcher", "templates", "check", "--dir", str(folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    preview = subprocess.run([sys.executable, "-m", "dispatcher", "templates", "preview", PERSONAL_TEMPLATE,
                              "--dir", str(folder), "--user", '{"name": "User 7"}', "--channel", "sms"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert preview.returncode == 0 and "Hi User 7, Bench is being installed" in preview.stdout


def test_the_personalised_workload_delivers_everything() -> None:
    with StandIns() as standins:
        result = _mixed("embedded", standins, Options(), 90, 2, update=False, template=PERSONAL_TEMPLATE)
    assert result.failed == 0
    assert result.sent["in_app"] == 90
    for channel in ("email", "sms", "push"):
        assert result.arrived[channel] == result.sent[channel] > 0, channel
