"""The gateway's half of fan-out: check a request, split it into chunk messages, enqueue them.

A request to up to 10,000 recipients becomes ``ceil(n / chunk_size)`` queue messages carrying
the notification and a slice of the recipients; the workers do the per-recipient work. The
request is checked here as the worker will check each message (template, channels, a trial
render), so a bad request is a 4xx now instead of a dead letter later.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dispatcher.errors import InvalidRequest, NotificationCancelled, TemplateError, UnknownTemplate
from dispatcher.group_commit import GroupCommit
from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import HeaderUpdate, now_us
from dispatcher.planning import (
    category_of,
    channel_sets,
    header_update,
    trial_context,
    trial_parts,
    trial_render,
)
from dispatcher.queue.enqueue import Enqueuer, Intake
from dispatcher.render_budget import OverCap, capped
from dispatcher.rendering import Part, TemplateRegistry, TemplateSet

__all__ = ["INLINE_RENDER_SECONDS", "Accepted", "FanOut", "PassedTrials"]

#: How long the gateway's trial render may run on the event loop before it moves to a thread.
INLINE_RENDER_SECONDS = 0.005


@dataclass(frozen=True)
class Accepted:
    id: str
    recipients: int
    chunks: int


class FanOut:
    """``max_message_bytes``: the queue's limit on one message (None: no limit that matters).
    Requests are committed through ``enqueue``, group-committed across concurrent requests."""

    def __init__(self, enqueue: Enqueuer, templates: TemplateRegistry, chunk_size: int,
                 max_message_bytes: int | None) -> None:
        self._templates = templates
        self._chunk_size = chunk_size
        self._limit = max_message_bytes

        self._commit: GroupCommit[Intake, set[str]] = GroupCommit(enqueue)
        self._passed = PassedTrials()

    async def accept(self, service: str, request: dict[str, Any],
                     send_at: int | None = None) -> Accepted:
        """``request`` holds the fields of ``POST /v1/notifications`` (id already checked);
        ``send_at`` (µs since the epoch): hold its messages until then. Raises
        :class:`~dispatcher.errors.InvalidRequest` naming the field at fault, and
        :class:`~dispatcher.errors.NotificationCancelled` for a cancelled notification."""
        recipients, own = _recipients(request["recipients"])
        base = ChunkMessage(service=service, recipients=tuple(recipients[:1]),
                            recipients_total=len(recipients), **_fields(request))
        personal_keys = frozenset(k for data in own.values() for k in data)
        header = await self._check(base, personal_keys)
        if send_at is not None and send_at > now_us():
            header = replace(header, send_at=send_at)
        bodies = [body for i in range(0, len(recipients), self._chunk_size)
                  for body in self._encode(base, recipients[i:i + self._chunk_size], own)]
        refused = await self._commit.submit([Intake(header, bodies)])
        if base.id in refused:
            raise NotificationCancelled(base.id)
        return Accepted(base.id, len(recipients), len(bodies))

    def _encode(self, base: ChunkMessage, recipients: list[str],
                own: dict[str, dict[str, Any]]) -> list[str]:
        """Encoded chunks of these recipients (with their own data), halved until each fits the
        queue's size limit."""
        data = {r: own[r] for r in recipients if r in own} if own else {}
        body = encode_chunk(base.model_copy(update={"recipients": tuple(recipients),
                                                    "recipient_data": data}))
        limit = self._limit
        if limit is None or len(body.encode()) <= limit:
            return [body]
        if len(recipients) == 1:
            field = f"recipients[{recipients[0]!r}].data" if data else "data"
            raise InvalidRequest(field, f"the notification is too large for the queue "
                                        f"({len(body.encode())} bytes; the limit is {limit})")
        half = len(recipients) // 2
        return self._encode(base, recipients[:half], own) + self._encode(base, recipients[half:], own)

    async def _check(self, message: ChunkMessage, personal_keys: frozenset[str]) -> HeaderUpdate:
        """Check the request as the worker will: template, channels, and a trial render of the
        parts that are the same for every recipient, unless parts reading the same values
        passed it before (:class:`PassedTrials`). The render runs on the event loop for at
        most ``INLINE_RENDER_SECONDS``; one that takes longer starts again in a thread (a
        template may take up to its render budget; the event loop must not). Most renders take
        tens of microseconds, and the hop to a thread cost more than that: 8 % of the API
        process's CPU at 250 notifications/s. Parts rendered per recipient can fail for some
        recipients only: those fail their rows (``template_error``), not the request."""
        templates = self._templates.current()
        try:
            template = templates.info(message.template)
        except UnknownTemplate as exc:
            raise InvalidRequest("template", f"{exc}; known: {templates.names()}") from None
        sets = channel_sets(message.channels, template)  # ChannelNotInTemplate names the field
        parts = trial_parts(templates, message, sorted(sets.all), personal_keys)
        context = trial_context(message, category_of(message, template))
        key = self._passed.key(templates, parts, context)
        if key is None or not self._passed.seen(key):
            trial = functools.partial(trial_render, parts, context)
            try:
                try:
                    with capped(INLINE_RENDER_SECONDS):
                        trial()
                except OverCap:
                    await asyncio.to_thread(trial)
            except TemplateError as exc:
                raise InvalidRequest("data", f"the template can't be rendered with this data: {exc}") from None
            if key is not None:
                self._passed.add(templates, key)
        return header_update(message, template, sets)


class PassedTrials:
    """The trial renders that passed, keyed by what they read, so that a request like one
    already checked is not rendered again.

    A part renders the same from the same values of the variables it reads (its
    :attr:`~dispatcher.rendering.Part.variables`, the layouts it names included): the key is
    the parts and those values (JSON), not the whole context, so the notification's own id,
    which most parts don't read, does not make every request new. The same data, state and
    locale (the app's name in "installing…", then "completed") is most of a gateway's
    traffic; data that differs on every request (an order number the template prints) misses
    every time, and costs its key. What a hit skips is the check alone: the worker renders
    every part for real, and a render that fails there fails its rows (``template_error``).

    Bounded: the ``size`` most recently used keys, none longer than ``max_key_chars``;
    emptied when the templates change (a reload is a new set, and parts are named by
    identity within a set). Used on the event loop only.
    """

    def __init__(self, size: int = 1024, max_key_chars: int = 2048) -> None:
        self._size = size
        self._max_key_chars = max_key_chars
        self._keys: OrderedDict[tuple[tuple[int, ...], str], None] = OrderedDict()
        self._set: TemplateSet | None = None

    def key(self, templates: TemplateSet, parts: Sequence[Part],
            context: Mapping[str, Any]) -> tuple[tuple[int, ...], str] | None:
        """The key of rendering ``parts`` of ``templates`` in ``context``, or None when it is
        not to be kept (too long, or a value that is not JSON)."""
        if templates is not self._set:
            self._set = templates
            self._keys.clear()
        names = sorted({name for part in parts for name in part.variables or ()})
        try:
            values = json.dumps({name: context[name] for name in names if name in context},
                                separators=(",", ":"))
        except (TypeError, ValueError):
            return None
        if len(values) > self._max_key_chars:
            return None
        return tuple(id(part) for part in parts), values

    def seen(self, key: tuple[tuple[int, ...], str]) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def add(self, templates: TemplateSet, key: tuple[tuple[int, ...], str]) -> None:
        """Keep ``key``, unless the templates changed meanwhile (a render in a thread)."""
        if templates is not self._set:
            return
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)


def _recipients(items: list[Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Recipient ids in order without repeats, and the data of those that carry their own
    (``{"id": ..., "data": {...}}``). An id given twice with different data is refused."""
    ids: dict[str, None] = {}
    own: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        user_id, data = (item, None) if isinstance(item, str) else (item["id"], item.get("data"))
        if data and user_id in own and own[user_id] != data:
            raise InvalidRequest(f"recipients[{i}]", f"user {user_id!r} is listed more than once "
                                                     "with different data")
        ids[user_id] = None
        if data:
            own[user_id] = data
    return list(ids), own


def _fields(request: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "version", "template", "data", "channels", "category", "state", "locale")
    return {k: request[k] for k in keys if request.get(k) is not None}


