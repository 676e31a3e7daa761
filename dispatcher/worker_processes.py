"""``dispatcher serve``'s worker processes: started with it, started again when one dies,
passed its ``SIGHUP``, stopped with it.

``serve`` answers the API in its own process and delivers in ``DISPATCHER_WORKER_PROCESSES``
worker processes (``dispatcher worker --parent-pid …``), one process tree. The API process
runs no worker loop: a worker loop in the API's event loop made every request wait behind a
unit of work's planning and commits (the accept p99 of small traffic, docs/BENCHMARKS.md).

A worker process that dies (killed, out of memory) is started again at once, and after a
pause that doubles (up to :data:`MAX_RESTART_DELAY`) while new ones keep dying soon after
starting, so a process that cannot start does not spin. Its chunks come back to the others
after the queue's visibility timeout, as after any crash. Without Redis each worker process
sends its live events up a pipe the API process reads (:mod:`dispatcher.bus.pipe`).

Each worker process also gets a pipe of its own (``DISPATCHER_STARTED_FD``) and writes one
byte there once it takes chunks (its runtime open, its providers built: about a second of CPU
on a small machine). Until every slot's first process has done so, :meth:`WorkerProcesses.
check_started` raises and ``serve``'s ``/readyz`` answers 503: a new ``serve`` (a deploy, a
restart) is ready when it can deliver what it accepts, and one whose workers cannot start
(they keep dying at start) never becomes ready. A worker process that dies later and is
started again does not make ``serve`` unready: its API goes on accepting, the queue holds
the chunks.

Children start with ``SIGHUP`` blocked (the signal mask survives ``fork`` and ``exec``): a
hangup sent to a worker process while it starts stays pending until it can reload its
templates, instead of killing it (:mod:`dispatcher.template_reload`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from dispatcher.config import Settings

__all__ = ["WorkerProcesses", "WorkersStarting", "say_started"]

log = logging.getLogger("dispatcher.workers")

#: A worker process that lived at least this long was healthy: the next restart is immediate.
HEALTHY_SECONDS = 30.0
#: Longest pause before starting again a worker process that keeps dying young.
MAX_RESTART_DELAY = 30.0
#: The environment variable naming a worker process's end of its "started" pipe.
STARTED_FD = "DISPATCHER_STARTED_FD"
#: Seconds to wait, once the worker processes have exited, for their last live events.
STOP_GRACE = 5.0


class WorkerProcesses:
    def __init__(self, settings: Settings, count: int, *,
                 relay: Callable[[int], Coroutine[Any, Any, None]] | None,
                 log_level: str | None = None) -> None:
        """``relay(fd)`` reads a worker process's live events from its pipe until it closes
        (:func:`dispatcher.bus.pipe.forward`); None: no pipes (Redis carries the events)."""
        self._relay = relay
        self._count = count
        self._env = {**os.environ, "DISPATCHER_API_KEYS": settings.api_keys or "",
                     "DISPATCHER_USER_TOKEN_SECRET": settings.user_token_secret or "",
                     "DISPATCHER_WORKER_CONCURRENCY": str(settings.worker_concurrency)}
        self._argv = [sys.executable, "-m", "dispatcher", "worker", "--parent-pid", str(os.getpid())]
        self._argv += ["--log-level", log_level] if log_level else []
        self._children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started: set[int] = set()  # slots whose worker process has said it takes chunks
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def children(self) -> Sequence[subprocess.Popen[bytes]]:
        """The worker processes running now."""
        return [child for child in self._children if child is not None]

    def check_started(self) -> None:
        """Raise :class:`WorkersStarting` until every slot's worker process has once said it
        takes chunks (``serve``'s readiness)."""
        if len(self._started) < self._count:
            raise WorkersStarting(
                f"{self._count - len(self._started)} of {self._count} worker processes still starting")

    def start(self) -> None:
        """Start every worker process, each watched from now on (call on the running loop)."""
        for slot in range(self._count):
            self._keep(self._restart_when_gone(slot, self._spawn(slot)))

    def send_signal(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    async def stop(self) -> None:
        """Ask every worker process to stop (they finish the chunks in progress) and wait."""
        self._stopping = True
        children = self.children
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            await asyncio.to_thread(child.wait)
        # The pipes' readers end with their children, after the last events; a pending restart
        # sees ``_stopping`` and returns.
        _, late = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE) if self._tasks else ((), ())
        for task in late:
            task.cancel()

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        """Start the worker process of ``slot`` (raises :class:`OSError` when it can't)."""
        # The child inherits this thread's signal mask (the event loop's, the main thread):
        # SIGHUP blocked while it starts; a hangup for this process meanwhile waits here too.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        pipes = [os.pipe()] + ([os.pipe()] if self._relay is not None else [])
        try:
            env = {**self._env, STARTED_FD: str(pipes[0][1])}
            if self._relay is not None:
                env["DISPATCHER_BUS_FD"] = str(pipes[1][1])
            child = subprocess.Popen(self._argv, env=env, pass_fds=[w for _, w in pipes])
        except BaseException:
            for r, _ in pipes:
                os.close(r)
            raise
        finally:
            for _, w in pipes:
                os.close(w)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._await_started(slot, pipes[0][0])
        if self._relay is not None:
            self._keep(self._relay(pipes[1][0]))
        self._children[slot] = child
        return child

    def _await_started(self, slot: int, fd: int) -> None:
        """Mark ``slot`` started when its process writes to ``fd``; close ``fd`` then, or when
        the process ends without a word (the pipe's end of file)."""
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                said = os.read(fd, 1)
            except BlockingIOError:
                return
            except OSError:
                said = b""
            loop.remove_reader(fd)
            os.close(fd)
            if said:
                self._started.add(slot)

        os.set_blocking(fd, False)
        loop.add_reader(fd, readable)

    async def _restart_when_gone(self, slot: int, child: subprocess.Popen[bytes]) -> None:
        delay = 0.0
        while True:
            loop = asyncio.get_running_loop()
            started = loop.time()
            code = await asyncio.to_thread(child.wait)
            if self._stopping:
                return
            lived = loop.time() - started
            delay = 0.0 if lived >= HEALTHY_SECONDS else min(max(delay * 2, 1.0), MAX_RESTART_DELAY)
            log.error("worker process %d exited with %s after %.0f s; starting another%s",
                      child.pid, _exit_reason(code), lived,
                      f" in {delay:g} s" if delay else "")
            self._children[slot] = None
            while True:
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    child = self._spawn(slot)
                    break
                except OSError as exc:  # no memory, no process slots: try again later
                    delay = min(max(delay * 2, 1.0), MAX_RESTART_DELAY)
                    log.error("could not start a worker process (%s); trying again in %g s", exc, delay)

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class WorkersStarting(RuntimeError):
    """``serve``'s worker processes have not all started yet."""


def say_started() -> None:
    """In a worker process of ``serve``: tell it this process takes chunks now (once; a
    worker run by hand has no such pipe and nothing happens)."""
    value = os.environ.pop(STARTED_FD, None)
    if value is None:
        return
    try:
        fd = int(value)
        os.write(fd, b"1")
        os.close(fd)
    except (ValueError, OSError) as exc:  # set by hand, or the parent is gone
        log.warning("could not tell the serve process this worker started (%s=%r): %s",
                    STARTED_FD, value, exc)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
