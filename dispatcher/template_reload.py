"""Reloading the templates on ``SIGHUP``, in every process of a deployment.

``kill -HUP <pid>`` makes a process load its templates directory again: the new set is loaded
and checked (``dispatcher templates check``) in a thread, then swapped in; chunks being
planned keep the set they started with. A set that does not load or fails the check is not
used: the process keeps the previous one and logs every problem. ``dispatcher serve`` passes
the signal on to its worker processes, which reload the same way; a ``gateway`` and each
``worker`` of a production deployment reload when they are sent it themselves.

:class:`ReloadOnHangup` blocks ``SIGHUP`` in the main thread from its construction until
:meth:`ReloadOnHangup.start`; ``serve`` starts its worker processes with it blocked too
(:mod:`dispatcher.worker_processes`): a ``SIGHUP`` sent to a process while it starts stays
pending, instead of killing it, and is handled once its handler is installed. A hangup the
process itself gets in that window is remembered and handled at
:meth:`~ReloadOnHangup.start`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from dispatcher.errors import TemplateError
from dispatcher.rendering import TemplateRegistry

__all__ = ["ReloadOnHangup"]

log = logging.getLogger("dispatcher.templates")


class ReloadOnHangup:
    def __init__(self, templates: TemplateRegistry) -> None:
        self._templates = templates
        self._pass_on: Callable[[int], None] | None = None
        self._running: asyncio.Task[bool] | None = None
        self._again = False
        self._early = False
        # Any thread of this process that gets it meanwhile: remember it (never the default, which
        # terminates); the main thread blocks it, so children spawned now inherit it blocked.
        signal.signal(signal.SIGHUP, self._remember)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def _remember(self, _signum: int, _frame: object) -> None:
        self._early = True

    def start(self, pass_on: Callable[[int], None] | None = None) -> None:
        """Handle ``SIGHUP`` on the running loop from now on (``pass_on`` sends it on to the
        worker processes); a hangup that arrived since construction (or pending since this
        process started) is handled now."""
        self._pass_on = pass_on
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # a pending one arrives now
        if self._early:
            self._early = False
            loop.call_soon(self._hangup)

    def _hangup(self) -> None:
        if self._pass_on is not None:
            self._pass_on(signal.SIGHUP)
        if self._running is not None and not self._running.done():
            self._again = True  # one more reload after this one: the files may have changed since it began
            return
        self._running = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Reload now; whether the new set is in use."""
        while True:
            self._again = False
            try:
                loaded = await asyncio.to_thread(self._templates.reload)
            except TemplateError as exc:
                log.error("templates not reloaded, keeping the previous set: %s", exc)
                ok = False
            except Exception:  # an unreadable folder and the like: keep serving with what we have
                log.exception("templates not reloaded, keeping the previous set")
                ok = False
            else:
                log.info("templates reloaded from %s: %s", self._templates.directory,
                         ", ".join(loaded.names()) or "none")
                ok = True
            if not self._again:
                return ok
