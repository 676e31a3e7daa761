"""A budget for every render: at most ``seconds`` of time and ``max_chars`` of output per part.

Templates are author-written code run over caller-supplied data. Jinja's sandbox stops them
from reaching Python's internals, not from running long or growing huge: two nested
``range(100000)`` loops ran for hours on the gateway's event loop, and ``{{ 'x' * 10**8 }}``
made a 100 MB part. Here, inside the sandbox:

* every loop over ``range``, every call, every intercepted operator and every piece of output
  checks the deadline (``DISPATCHER_RENDER_TIMEOUT``): the render's CPU time, its thread's, not
  the clock on the wall, so a render slowed by a busy machine (other threads holding the GIL,
  the cores taken) is not the template's fault. The wall clock is read first (tens of
  nanoseconds); only past the budget on it is the thread's CPU time read, and the deadline
  moved by what the render has not yet used;
* ``*`` and ``+`` on strings and lists are refused when the result would exceed ``max_chars``
  (``DISPATCHER_RENDER_MAX_CHARS``), before Python builds it; ``**`` with an exponent over 256
  is refused (``7 ** 100000000`` takes minutes);
* a call whose result is a string or list longer than ``max_chars`` is refused;
* the output is counted as it is generated.

A render over budget raises :class:`BudgetExceeded`, which the registry reports as the
part's :class:`~dispatcher.errors.TemplateError`: a 422 at the gateway, ``failed`` /
``template_error`` rows in the worker. The checks are cooperative: they run between the
template's steps, so one step that is slow by itself (a filter over a huge input) is bounded
by the input bounds (``DISPATCHER_MAX_DATA_BYTES``), not by the clock.

A caller may also cap a render shorter than its budget (:func:`capped`): past the cap it
raises :class:`OverCap`, which is not the template's fault and which the registry lets
through, so the caller can render it again where taking longer is harmless. The gateway
renders its trial on the event loop this way, for a few milliseconds at most (checked the
same cooperative way), and only a slower template goes to a thread (``dispatcher.fan_out``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, safe_range

__all__ = ["BoundedSandbox", "BudgetExceeded", "OverCap", "RenderBudget", "capped", "render_within"]

_MAX_EXPONENT = 256
_deadline: ContextVar[_Deadline | None] = ContextVar("render_deadline", default=None)
_cap: ContextVar[float | None] = ContextVar("render_cap", default=None)


@dataclass(frozen=True)
class RenderBudget:
    seconds: float = 1.0  # of the rendering thread's CPU time
    max_chars: int = 1_000_000


class BudgetExceeded(Exception):
    """A render that ran out of time or grew past its size."""


class OverCap(BaseException):  # noqa: N818  # not an error: "render it again without the cap"
    """A render that ran past its caller's cap (:func:`capped`). A ``BaseException``, so the
    registry's "whatever a template raises is its error" does not turn it into one."""


@contextmanager
def capped(seconds: float) -> Iterator[None]:
    """Renders within this block raise :class:`OverCap` once ``seconds`` have passed."""
    token = _cap.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _cap.reset(token)


class _Deadline:
    """A render's budget of ``seconds`` of its thread's CPU time, checked against the wall
    clock first: CPU time never runs ahead of it."""

    __slots__ = ("cpu_started", "seconds", "wall")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.wall = time.monotonic() + seconds
        self.cpu_started = time.thread_time()

    def passed(self, now: float) -> None:
        """``now`` is past the wall-clock deadline: raise if the CPU time is past the budget."""
        used = time.thread_time() - self.cpu_started
        if used > self.seconds:
            raise BudgetExceeded("rendering took longer than its time budget (DISPATCHER_RENDER_TIMEOUT)")
        self.wall = now + (self.seconds - used)  # the soonest the CPU time could pass it


def _tick() -> None:
    deadline, cap = _deadline.get(), _cap.get()
    if deadline is None and cap is None:
        return
    now = time.monotonic()
    if deadline is not None and now > deadline.wall:
        deadline.passed(now)
    if cap is not None and now > cap:
        raise OverCap


class BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, budget: RenderBudget, **options: Any) -> None:
        super().__init__(**options)
        self.budget = budget
        self.globals["range"] = self._range

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A flat copy instead of Jinja's ``ChainMap``: every render copies a template's globals into
        its context, and iterating a ChainMap made that most of a short part's render time (17 of
        24 µs). The environment's globals are complete before any template is compiled."""
        return {**self.globals, **(d or {})}

    def _range(self, *args: int) -> Iterator[int]:
        return _Ticking(iter(safe_range(*args)))

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        _tick()
        if op == "*":
            self._check_size(_repeat_size(left, right))
        elif op == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            self._check_size(len(left) + len(right))
        elif op == "**" and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise BudgetExceeded(f"an exponent over {_MAX_EXPONENT} is not allowed in a template")
        return super().call_binop(context, op, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any,  # noqa: N805
             **kwargs: Any) -> Any:
        _tick()
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | list | tuple):
            __self._check_size(len(result))
        return result

    def _check_size(self, size: int) -> None:
        if size > self.budget.max_chars:
            raise BudgetExceeded(f"a value of {size:,} characters or items is over the render budget "
                                 f"of {self.budget.max_chars:,} (DISPATCHER_RENDER_MAX_CHARS)")


def render_within(template: jinja2.Template, context: Mapping[str, object], budget: RenderBudget) -> str:
    """Render ``template`` within ``budget`` (raises :class:`BudgetExceeded`)."""
    token = _deadline.set(_Deadline(budget.seconds))
    try:
        pieces, size = [], 0
        for piece in template.generate(context):
            size += len(piece)
            if size > budget.max_chars:
                raise BudgetExceeded(f"the rendered part is over {budget.max_chars:,} characters "
                                     "(DISPATCHER_RENDER_MAX_CHARS)")
            pieces.append(piece)
            if not len(pieces) & 0xF:  # every 16 pieces: loops and calls tick on their own
                _tick()
        return "".join(pieces)
    finally:
        _deadline.reset(token)


class _Ticking:
    """A ``range`` that checks the deadline every 256 steps."""

    def __init__(self, inner: Iterator[int]) -> None:
        self._inner = inner
        self._count = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        self._count += 1
        if not self._count & 0xFF:
            _tick()
        return next(self._inner)


def _repeat_size(left: Any, right: Any) -> int:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return len(seq) * max(times, 0)
    return 0
