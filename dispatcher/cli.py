"""``dispatcher``: the command line. ``dispatcher --help`` lists the commands, each has ``--help``.

* processes: ``serve`` (the API and the workers in one process tree: the embedded default,
  SQLite, no infrastructure needed), ``gateway`` (the API only), ``worker`` (workers only);
* through the HTTP API (``DISPATCHER_URL``, ``DISPATCHER_API_KEY``): ``send``, ``status``;
* on the queue itself (the settings of the processes): ``dlq list | count | replay | purge``;
* on the store: ``webhooks failed | replay`` (webhooks the receivers never took);
* ``token``: an end user's JWT, signed with ``DISPATCHER_USER_TOKEN_SECRET``.

Global options (``--log-level``) go before or after the command. Exit status: 0 done;
1 the work failed (rows failed, the API refused a request); 2 usage or configuration (a bad
setting, a database, queue or API that can't be reached: one line on stderr, no traceback);
3 ``--wait`` / ``--watch`` timed out.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import inspect
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from dispatcher.bus.pipe import forward
from dispatcher.client import ApiRefused, ClientError
from dispatcher.commands import dlq, send, status, token, webhooks
from dispatcher.config import ConfigurationError, Settings
from dispatcher.errors import TemplateError, Unavailable
from dispatcher.observability.logs import configure as configure_logs
from dispatcher.template_reload import ReloadOnHangup

__all__ = ["main"]

log = logging.getLogger("dispatcher")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["templates"]:  # its own parser: dispatcher.template_cli (check, preview)
        from dispatcher.template_cli import main as templates_main

        configure_logging("warning")
        return templates_main(argv[1:])
    try:
        app(args=list(argv) if argv is not None else None, prog_name="dispatcher")
    except SystemExit as exc:  # typer's own ending: help, usage errors (2), typer.Exit
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except ValidationError as exc:
        return _fail(2, "invalid configuration: " + "; ".join(map(_setting_error, exc.errors())))
    except (ConfigurationError, TemplateError, Unavailable) as exc:
        return _fail(2, str(exc))
    except ApiRefused as exc:
        return _fail(2 if exc.status == 401 else 1, f"the API refused: {exc}")
    except ClientError as exc:
        return _fail(2, str(exc))
    except KeyboardInterrupt:
        return 130
    return 0


def configure_logging(level: str) -> None:
    """The process's logging, set once, after the global options were read."""
    configure_logs(level, os.environ.get("DISPATCHER_LOG_FORMAT", "text"))


def _fail(code: int, message: str) -> int:
    print(f"dispatcher: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return code


def _setting_error(error: Any) -> str:
    """``DISPATCHER_X: what is wrong``, once (a validator's message may name it already)."""
    name = "DISPATCHER_" + "_".join(map(str, error["loc"])).upper() if error["loc"] else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if message.startswith(name) else f"{name}: {message}"


# -- global options: accepted before the command (by the app) and after it (by each command) --

class Level(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogLevel = Annotated[Level | None, typer.Option(
    "--log-level", help="Log level (default info); before or after the command.",
    show_default=False, case_sensitive=False)]
_before: dict[str, str] = {}


def _level(value: Level | None) -> str | None:
    return value.value if value is not None else None


def _with_global_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with the global options added to its parameters; logging is set up
    before it runs (the option given after the command wins over the one before)."""
    signature = inspect.signature(function, eval_str=True)
    extra = inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=LogLevel)

    @functools.wraps(function)
    def run(*args: Any, log_level: Level | None = None, **kwargs: Any) -> Any:
        configure_logging(_level(log_level) or _before.get("log_level") or "info")
        return function(*args, **kwargs)

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), extra])
    run.__annotations__ = {**typing.get_type_hints(function, include_extras=True), "log_level": LogLevel}
    return run


_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

app = typer.Typer(context_settings=_SETTINGS, no_args_is_help=True, add_completion=False,
                  rich_markup_mode="rich", pretty_exceptions_enable=False, help=(
    "The notification dispatcher: run its processes, send and follow notifications, manage the "
    "dead letters, mint user tokens. Settings come from DISPATCHER_* variables or a .env file in "
    "the working directory (the environment wins)."), epilog=(
    "Exit status: 0 done; 1 the work failed (rows failed, the API refused a request); 2 usage or "
    "configuration (a bad setting; a database, queue or API that can't be reached); 3 a wait timed out."))


@app.callback()
def _options_before_the_command(log_level: LogLevel = None) -> None:
    level = _level(log_level)
    if level:
        _before["log_level"] = level


def _command(name: str, function: Callable[..., Any], examples: str, on: typer.Typer = app) -> None:
    on.command(name, epilog=_examples(examples), context_settings=_SETTINGS)(_with_global_options(function))


def _examples(text: str) -> str:
    """An epilog of example command lines, one per line (rich help joins single newlines)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "[b]Examples[/b]\n" + "\n".join(f"  {line}" for line in lines)


# -- the processes ----------------------------------------------------------------------------

Host = Annotated[str | None, typer.Option(help="Listen address (DISPATCHER_HOST, default 127.0.0.1).")]
Port = Annotated[int | None, typer.Option(min=1, max=65535, help="Listen port (DISPATCHER_PORT, default 8000).")]
Concurrency = Annotated[int | None, typer.Option(
    min=1, help="Batches in progress at once per process (DISPATCHER_WORKER_CONCURRENCY, default 4).")]


def serve_command(host: Host = None, port: Port = None, concurrency: Concurrency = None,
                  processes: Annotated[int | None, typer.Option(
                      min=1, help="Worker processes, beside the API's own process "
                                  "(DISPATCHER_WORKER_PROCESSES; default: the CPUs this process may "
                                  "use, cgroup quota included).")] = None,
                  ) -> None:
    """The API and the workers in one process tree (the embedded default): the API in this
    process, the deliveries in worker processes it starts (and starts again if one dies)."""
    settings = _settings(host=host, port=port, worker_concurrency=concurrency, worker_processes=processes)
    raise typer.Exit(_run(_serve(settings)))


def gateway_command(host: Host = None, port: Port = None) -> None:
    """The API only (workers run as `dispatcher worker`)."""
    raise typer.Exit(_run(_gateway(_settings(host=host, port=port))))


def worker_command(concurrency: Concurrency = None,
                   parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None) -> None:
    """Workers only: take chunks from the queue and deliver them."""
    raise typer.Exit(_run(_worker(_settings(worker_concurrency=concurrency), parent_pid)))


def _settings(**overrides: Any) -> Settings:
    return Settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})


_command("serve", serve_command, """
    dispatcher serve
    dispatcher serve --port 9000 --processes 2 --log-level warning
    DISPATCHER_DATABASE_URL=postgresql://u:p@db/dispatcher dispatcher serve --host 0.0.0.0""")
_command("gateway", gateway_command, """
    dispatcher gateway --host 0.0.0.0 --port 8000""")
_command("worker", worker_command, """
    dispatcher worker --concurrency 8""")
_command("send", send.send, send.EXAMPLES)
_command("status", status.status, status.EXAMPLES)
_command("token", token.token, token.EXAMPLES)


@app.command("templates", add_help_option=False, context_settings={
    "allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="Check or preview templates: dispatcher templates check [--dir DIR], "
         "dispatcher templates preview NAME … (dispatcher templates --help).")
def _templates(ctx: typer.Context) -> None:
    from dispatcher.template_cli import main as templates_main

    raise typer.Exit(templates_main(list(ctx.args)))

dlq_app = typer.Typer(help=dlq.__doc__, context_settings=_SETTINGS,
                      rich_markup_mode="rich", invoke_without_command=True)
dlq_app.callback()(_with_global_options(dlq.default))
_command("list", dlq.list_letters, dlq.LIST_EXAMPLES, on=dlq_app)
_command("count", dlq.count, "dispatcher dlq count", on=dlq_app)
_command("replay", dlq.replay, dlq.REPLAY_EXAMPLES, on=dlq_app)
_command("purge", dlq.purge, "dispatcher dlq purge --yes", on=dlq_app)
app.add_typer(dlq_app, name="dlq", epilog=_examples(dlq.LIST_EXAMPLES + "\n" + dlq.REPLAY_EXAMPLES))

webhooks_app = typer.Typer(help=webhooks.__doc__, context_settings=_SETTINGS, rich_markup_mode="rich",
                           no_args_is_help=True)
_command("failed", webhooks.failed, webhooks.FAILED_EXAMPLES, on=webhooks_app)
_command("replay", webhooks.replay, webhooks.REPLAY_EXAMPLES, on=webhooks_app)
app.add_typer(webhooks_app, name="webhooks")


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (``uvicorn[standard]`` brings it): a faster loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _serve(settings: Settings, *, deliver: bool = True) -> int:
    import uvicorn

    from dispatcher.api import create_app
    from dispatcher.api.connections import server_config
    from dispatcher.observability.metrics import prepare_multiprocess
    from dispatcher.runtime import Runtime
    from dispatcher.worker_processes import WorkerProcesses

    settings, notes = settings.with_dev_credentials()
    prepare_multiprocess()  # before the worker processes start: /metrics adds theirs up
    runtime = await Runtime.open(settings, writes_first=True)  # requests wait for its commits
    for note in notes:
        log.warning(note)
    reload = ReloadOnHangup(runtime.templates)
    # The API answers in this process and the workers deliver in processes of their own (the
    # gateway starts none): a worker loop here made requests wait behind its planning and commits.
    relay = None if settings.redis_url else functools.partial(forward, bus=runtime.bus)
    workers = WorkerProcesses(settings, settings.process_count() if deliver else 0, relay=relay,
                              log_level=_child_level())
    workers.start()
    reload.start(workers.send_signal)
    app = create_app(runtime, owns_runtime=True, stop_workers=workers.stop,
                     workers_started=workers.check_started)
    server = uvicorn.Server(server_config(app, settings))
    _settle_heap()
    # Shutdown (workers finish their chunks, the runtime closes) runs in the app's lifespan:
    # on SIGTERM uvicorn re-raises the signal after it, so nothing after serve() would run.
    await server.serve()
    return 0


async def _gateway(settings: Settings) -> int:
    return await _serve(settings, deliver=False)


def _child_level() -> str | None:
    """This process's log level, for its worker processes (when it is one of ours)."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    return level if level in {member.value for member in Level} else None


async def _worker(settings: Settings, parent_pid: int | None = None) -> int:
    from dispatcher.observability.metrics import serve_worker_metrics
    from dispatcher.runtime import Runtime
    from dispatcher.worker_processes import say_started

    serve_worker_metrics(settings.host, settings.metrics_port if parent_pid is None else None)
    runtime = await Runtime.open(settings)
    ReloadOnHangup(runtime.templates).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_orphaned(parent_pid, stop)) if parent_pid else None
    log.info("worker started: %d chunks at once", settings.worker_concurrency)
    _settle_heap()
    say_started()  # serve's /readyz waits for it
    try:  # the webhook sender runs beside the delivery loops (dispatcher.webhooks)
        await asyncio.gather(runtime.worker().run(stop), runtime.webhook_sender().run(stop))
    finally:
        if watchdog:
            watchdog.cancel()
        await runtime.close()
    return 0


def _settle_heap() -> None:
    """Once a server process has started: collect start-up's garbage, then keep what is left
    (modules, the app, the schema, templates) out of every later garbage collection.

    Python's full collection walks every object it tracks. The first one in a gateway came
    about 900 requests after start and took 95 ms (54,314 objects of start-up's freed): every
    request in flight waited, and it was the p99 of an otherwise idle gateway (bench small
    --gateway-alone: p99 100-160 ms at 300/s, where p50 was 3 ms and the p99 at 600/s 11 ms)."""
    gc.collect()
    gc.freeze()


async def _orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop (finishing the chunks in progress) once the parent ``serve`` process is gone."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    log.warning("parent process %d is gone; stopping", parent_pid)
    stop.set()


