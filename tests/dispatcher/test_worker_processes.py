"""``serve``'s worker processes when a new one cannot be started.

The case: an upgrade replaced the interpreter's directory while ``serve`` runs, and a worker
process dies. Starting another fails with an ``OSError`` (here: the executable is gone); the
API process must not crash or spin, it logs the reason and tries again later, and once the
interpreter is back a new worker process starts. Real processes throughout: the interpreter
is reached through a symbolic link the test removes and puts back.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pytest
from support import until

from dispatcher.config import Settings
from dispatcher.worker_processes import WorkerProcesses


async def test_a_worker_process_that_cannot_be_started_again_is_retried_until_it_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    executable = Path(sys.executable)
    link = tmp_path / "python-prefix"
    link.symlink_to(executable.parent.parent, target_is_directory=True)
    monkeypatch.setattr(sys, "executable", str(link / executable.parent.name / executable.name))
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'dispatcher.db'}")
    caplog.set_level(logging.INFO, logger="dispatcher.workers")
    workers = WorkerProcesses(Settings(), 1, relay=None, log_level="warning")
    workers.start()
    try:
        [first] = workers.children
        await until(lambda: first.poll() is None, "the first worker process", timeout=5)

        link.unlink()  # the interpreter's directory is gone
        first.send_signal(signal.SIGKILL)
        await until(lambda: any("could not start a worker process" in r.getMessage()
                                for r in caplog.records), "the failed start", timeout=30)
        assert workers.children == []  # no process, and the API process still runs

        link.symlink_to(executable.parent.parent, target_is_directory=True)
        await until(lambda: workers.children, "a new worker process", timeout=60)
        [second] = workers.children
        assert second.pid != first.pid and second.poll() is None
    finally:
        await workers.stop()

    failed = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert "No such file or directory" in failed[0] and "trying again in" in failed[0]
    assert any(f"worker process {first.pid} exited with signal SIGKILL" in r.getMessage()
               for r in caplog.records)
    assert os.path.exists(sys.executable)
