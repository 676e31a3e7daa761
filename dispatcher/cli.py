"""``dispatcher serve | gateway | worker | dlq``: the process entry points.

* ``serve``: the API and the workers in one process (the embedded default: SQLite, no
  infrastructure needed);
* ``gateway``: the API only; ``worker``: the workers only (production: many of each);
* ``dlq``: list the dead-letter queue of the embedded queue, with reasons;
* ``webhooks failed | replay``: list failed webhooks, or send them again with their ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dispatcher.bus.pipe import forward
from dispatcher.config import ConfigurationError, Settings
from dispatcher.rendering import TemplateError

__all__ = ["main"]

log = logging.getLogger("dispatcher")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"dispatcher: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", getattr(args, "host", None)),
                                   ("port", getattr(args, "port", None)),
                                   ("worker_concurrency", getattr(args, "concurrency", None)),
                                   ("worker_processes", getattr(args, "processes", None)))
                 if v is not None}
    settings = settings.model_copy(update=overrides)
    try:
        if args.command == "dlq":
            return _run(_dlq(settings, args.limit))
        if args.command == "webhooks":
            return _run(_webhooks(settings, args))
        if args.command == "worker":
            return _run(_worker(settings, args.parent_pid))
        return _run(_COMMANDS[args.command](settings))
    except (ConfigurationError, TemplateError) as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (``uvicorn[standard]`` brings it): a faster loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "API and workers in one process"), ("gateway", "API only")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", help="listen address (DISPATCHER_HOST, default 127.0.0.1)")
        sub.add_argument("--port", type=int, help="listen port (DISPATCHER_PORT, default 8000)")
        if name == "serve":
            _concurrency(sub)
            sub.add_argument("--processes", type=int,
                             help="worker processes, this one included (DISPATCHER_WORKER_PROCESSES, "
                                  "default: one per CPU)")
    worker = commands.add_parser("worker", help="workers only")
    _concurrency(worker)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    dlq = commands.add_parser("dlq", help="list dead-lettered messages and why")
    dlq.add_argument("--limit", type=int, default=100)
    hooks = commands.add_parser("webhooks", help="list failed webhooks, or send them again (same ids)")
    hooks.add_argument("action", choices=["failed", "replay"])
    hooks.add_argument("--service", help="only this service's webhooks (replay: default all)")
    hooks.add_argument("--id", help="replay: only this webhook")
    hooks.add_argument("--limit", type=int, default=100)
    return parser


def _concurrency(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--concurrency", type=int,
                     help="chunks in progress at once (DISPATCHER_WORKER_CONCURRENCY, default 4)")


async def _serve(settings: Settings, *, workers: int = 1) -> int:
    import uvicorn

    from dispatcher.api import create_app
    from dispatcher.api.connections import server_config
    from dispatcher.runtime import Runtime

    settings, notes = settings.with_dev_credentials()
    for note in notes:
        log.warning(note)
    runtime = await Runtime.open(settings)
    # The API process runs a worker loop too: the embedded bus is in-process, so the live
    # stream it serves carries the events of its own worker only (README, "live stream").
    children = _spawn_workers(settings, settings.process_count() - 1) if workers else []
    for fd in (child.bus_fd for child in children if child.bus_fd is not None):
        _background.add(asyncio.create_task(forward(fd, runtime.bus)))
    app = create_app(runtime, workers=workers, owns_runtime=True,
                     children=[child.popen for child in children])
    server = uvicorn.Server(server_config(app, settings))
    # Shutdown (workers finish their chunks, the runtime closes) runs in the app's lifespan:
    # on SIGTERM uvicorn re-raises the signal after it, so nothing after serve() would run.
    await server.serve()
    return 0


async def _gateway(settings: Settings) -> int:
    return await _serve(settings, workers=0)


@dataclass(frozen=True)
class _Child:
    popen: subprocess.Popen[bytes]
    bus_fd: int | None  # our end of its live-event pipe (None: Redis carries them)


#: Tasks that live as long as the process (forwarding the children's live events).
_background: set[asyncio.Task[None]] = set()


def _spawn_workers(settings: Settings, count: int) -> list[_Child]:
    """``dispatcher serve``'s extra worker processes, one process tree: they share its
    settings (credentials included), send their live events up a pipe (without Redis), and
    stop when it stops, or when it dies."""
    env = {**os.environ, "DISPATCHER_API_KEYS": settings.api_keys or "",
           "DISPATCHER_USER_TOKEN_SECRET": settings.user_token_secret or "",
           "DISPATCHER_WORKER_CONCURRENCY": str(settings.worker_concurrency)}
    argv = [sys.executable, "-m", "dispatcher", "worker", "--parent-pid", str(os.getpid())]
    children = []
    for _ in range(max(count, 0)):
        if settings.redis_url:
            children.append(_Child(subprocess.Popen(argv, env=env), None))
            continue
        ours, theirs = os.pipe()
        popen = subprocess.Popen(argv, env={**env, "DISPATCHER_BUS_FD": str(theirs)},
                                 pass_fds=(theirs,))
        os.close(theirs)
        children.append(_Child(popen, ours))
    return children


async def _worker(settings: Settings, parent_pid: int | None = None) -> int:
    from dispatcher.runtime import Runtime

    runtime = await Runtime.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_orphaned(parent_pid, stop)) if parent_pid else None
    log.info("worker started: %d chunks at once", settings.worker_concurrency)
    try:
        await asyncio.gather(runtime.worker().run(stop), runtime.webhook_sender().run(stop))
    finally:
        if watchdog:
            watchdog.cancel()
        await runtime.close()
    return 0


async def _orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop (finishing the chunks in progress) once the parent ``serve`` process is gone."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    log.warning("parent process %d is gone; stopping", parent_pid)
    stop.set()


async def _dlq(settings: Settings, limit: int = 100) -> int:
    from dispatcher.runtime import Runtime

    runtime = await Runtime.open(settings)
    try:
        for letter in await runtime.queue.dead_letters(limit):
            print(json.dumps({"id": letter.id, "reason": letter.reason,
                              "receive_count": letter.receive_count, "body": letter.body}))
    finally:
        await runtime.close()
    return 0


async def _webhooks(settings: Settings, args: argparse.Namespace) -> int:
    """``failed``: one JSON line per failed webhook of ``--service``; ``replay``: make failed
    webhooks due again (the worker processes send them, with their ids)."""
    from dispatcher.runtime import Runtime

    runtime = await Runtime.open(settings)
    try:
        if args.action == "replay":
            print(json.dumps({"replayed": await runtime.store.webhooks.replay(args.service, args.id)}))
            return 0
        if not args.service:
            print("dispatcher: webhooks failed needs --service", file=sys.stderr)
            return 2
        for entry in await runtime.store.webhooks.entries(args.service, status="failed", limit=args.limit):
            print(json.dumps({"id": entry.id, "event": entry.event, "attempts": entry.attempts,
                              "last_error": entry.last_error, "payload": json.loads(entry.payload)}))
    finally:
        await runtime.close()
    return 0


_COMMANDS = {"serve": _serve, "gateway": _gateway}
