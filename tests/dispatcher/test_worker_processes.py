"""``serve``'s worker processes when a new one cannot be started, and its readiness.

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
from collections.abc import Callable
from pathlib import Path

import pytest
from support import until

from dispatcher.config import Settings
from dispatcher.worker_processes import WorkerProcesses, WorkersStarting


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


async def test_serve_is_not_ready_until_each_worker_process_says_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker processes here are small scripts: one that dies before a word (as a worker
    whose start fails does), then ones that say they started; readiness follows their word."""
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'dispatcher.db'}")
    flag = tmp_path / "may-start"
    script = ("import os, sys, time\n"
              f"if not os.path.exists({str(flag)!r}): sys.exit(3)\n"
              "from dispatcher.worker_processes import say_started\n"
              "say_started()\n"
              "say_started()  # once only: the second does nothing\n"
              "time.sleep(120)\n")
    workers = WorkerProcesses(Settings(), 2, relay=None, log_level="warning")
    monkeypatch.setattr(workers, "_argv", [sys.executable, "-c", script])
    workers.start()
    try:
        first = list(workers.children)
        await until(lambda: all(c.poll() is not None for c in first), "the first two to die",
                    timeout=30)
        with pytest.raises(WorkersStarting, match="2 of 2 worker processes still starting"):
            workers.check_started()

        flag.touch()  # the next ones start (after the restart pause, 1 s)
        await until(_started(workers), "every worker process started", timeout=60)
        assert all(c.poll() is None for c in workers.children)
        assert {c.pid for c in workers.children}.isdisjoint(c.pid for c in first)

        # One dies later: serve stays ready while another is started (its API accepts, the
        # queue holds the chunks).
        workers.children[0].kill()
        workers.check_started()
    finally:
        await workers.stop()


def _started(workers: WorkerProcesses) -> Callable[[], bool]:
    def check() -> bool:
        try:
            workers.check_started()
        except WorkersStarting:
            return False
        return True
    return check
