"""Planning one chunk: what each (recipient, channel) should become, decided per chunk.

Inputs are the chunk message, its template, and the recipients' records loaded in one go;
no I/O happens here. For each recipient and channel the plan says: skip (with the reason),
fail (a template error), deliver in-app, or send these provider messages. Contact data is
validated again here, since it may predate a rule change or come from outside the API.
Templates are rendered once per locale per chunk, not per recipient.

Quiet hours (``dispatcher.quiet_hours``): during the recipient's window, email, SMS and push
of a non-critical category stay ``pending`` (reason ``quiet_hours``, the detail says until
when) and the plan lists them in ``deferred``, by release time; the deliverer holds a copy of
the chunk for them until then. In-app is immediate; critical categories go at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from channels.base import Message
from dispatcher.contacts import normalize_email, normalize_phone
from dispatcher.errors import ChannelNotInTemplate, InvalidContact, TemplateError
from dispatcher.feed import Feed
from dispatcher.frequency import Cap, FrequencyCaps
from dispatcher.messages import ChunkMessage
from dispatcher.model import (
    Channel,
    ChunkRows,
    DeliveryStatus,
    FeedEntry,
    HeaderUpdate,
    Held,
    Reason,
    RowKey,
    RowState,
    UserRecord,
)
from dispatcher.part_limits import bounded
from dispatcher.quiet_hours import QuietHours
from dispatcher.rendering import TemplateInfo, TemplateRegistry
from dispatcher.unsubscribe import UnsubscribeLinks

__all__ = ["ChunkPlan", "ChannelSets", "Planner", "category_of", "channel_sets", "header_update",
           "render_context"]

_SKIPPED, _FAILED = DeliveryStatus.SKIPPED, DeliveryStatus.FAILED


@dataclass(frozen=True)
class ChannelSets:
    """``insert``: channels whose missing rows this message creates. ``reset``: channels whose
    rows at an older version this message takes over (sends again)."""

    insert: frozenset[str]
    reset: frozenset[str]

    @property
    def all(self) -> frozenset[str]:
        return self.insert | self.reset


def channel_sets(requested: tuple[str, ...] | None, template: TemplateInfo) -> ChannelSets:
    """Channels omitted: every channel of the template for new rows, and only the in-app
    entry for rows an older version made. Named: exactly those, plus a refresh of in-app
    entries that exist. Raises ChannelNotInTemplate for a channel the template lacks."""
    if requested is not None:
        missing = sorted(set(requested) - template.channels)
        if missing:
            raise ChannelNotInTemplate(f"template {template.name!r} has no parts for channel(s) {missing}; "
                             f"it has {sorted(template.channels)}")
    in_app = frozenset({Channel.IN_APP.value}) & template.channels
    if requested is None:
        return ChannelSets(insert=frozenset(template.channels), reset=in_app)
    return ChannelSets(insert=frozenset(requested), reset=frozenset(requested) | in_app)


def category_of(message: ChunkMessage, template: TemplateInfo) -> str:
    return message.category or template.category or "default"


def header_update(message: ChunkMessage, template: TemplateInfo, sets: ChannelSets) -> HeaderUpdate:
    """What ``message`` says about its notification's header."""
    return HeaderUpdate(
        id=message.id, service=message.service, version=message.version,
        template=message.template, data=message.data, state=message.state,
        category=category_of(message, template), locale=message.locale,
        channels=tuple(sorted(sets.insert)),
        recipients=message.recipients_total or len(set(message.recipients)),
    )


def render_context(message: ChunkMessage, category: str, locale: str | None) -> dict[str, Any]:
    """What a template sees: the notification's data, plus its state, category, id, locale."""
    return {**message.data, "state": message.state, "category": category,
            "notification_id": message.id, "locale": locale}


@dataclass
class ChunkPlan:
    """One chunk's plan: the state of each row, the feed entries, the provider messages."""

    message: ChunkMessage
    sets: ChannelSets
    rows: list[RowState] = field(default_factory=list)
    feed: dict[str, FeedEntry] = field(default_factory=dict)
    sends: dict[RowKey, list[Message]] = field(default_factory=dict)
    #: Rows waiting for the end of quiet hours: release time (µs) -> user -> channels.
    deferred: dict[int, dict[str, set[str]]] = field(default_factory=dict)
    category: str = "default"
    caps: tuple[Cap, ...] = ()

    @property
    def deferred_keys(self) -> set[RowKey]:
        return {RowKey(self.message.id, user, channel) for users in self.deferred.values()
                for user, channels in users.items() for channel in channels}

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(self.message.recipients))

    def chunk_rows(self, rows: list[RowState] | None = None,
                   held: Sequence[Held] = ()) -> ChunkRows:
        """What the ledger needs to open ``rows`` (default: all of them)."""
        return ChunkRows(self.message.id, self.message.version,
                         self.rows if rows is None else rows,
                         insert=self.sets.insert, reset=self.sets.reset, feed=self.feed,
                         held=held, category=self.category, caps=self.caps)


class Planner:
    def __init__(self, templates: TemplateRegistry, *, critical: frozenset[str],
                 phone_region: str | None, links: UnsubscribeLinks | None = None,
                 quiet_default: QuietHours | None = None, default_timezone: str = "UTC",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 caps: FrequencyCaps | None = None) -> None:
        self._caps = caps or FrequencyCaps()
        self._templates = templates
        self._links = links
        self._critical = critical
        self._phone_region = phone_region
        self._quiet_default = quiet_default
        self._default_zone = ZoneInfo(default_timezone)
        self._clock = clock

    def plan(self, message: ChunkMessage, template: TemplateInfo, sets: ChannelSets,
             users: Mapping[str, UserRecord], suppressed: frozenset[str] = frozenset()) -> ChunkPlan:
        category = category_of(message, template)
        renders = _Renders(self._templates, message, category, sorted(sets.all))
        plan = ChunkPlan(message, sets, category=category,
                         caps=() if category in self._critical else self._caps.for_category(category))
        now = self._clock()
        for user_id in plan.users:
            user = users.get(user_id) or UserRecord(id=user_id)
            parts = renders.for_locale(user.locale or message.locale)
            release = self._quiet_until(user, category, now)
            for channel in sorted(sets.all):
                self._plan_one(plan, category, user, channel, parts, release)
        if suppressed:
            _suppress(plan, suppressed)
        return plan

    def _quiet_until(self, user: UserRecord, category: str, now: datetime) -> int | None:
        """When the user's quiet hours end (µs), if they are on now and the category waits."""
        if category in self._critical:
            return None
        window = user.preferences.quiet(self._quiet_default)
        if window is None:
            return None
        zone = ZoneInfo(user.timezone) if user.timezone else self._default_zone
        end = window.release_at(now, zone)
        return None if end is None else int(end.timestamp() * 1_000_000)

    def _plan_one(self, plan: ChunkPlan, category: str, user: UserRecord, channel: str,
                  parts: dict[str, dict[str, str]] | TemplateError, release: int | None) -> None:
        message = plan.message
        key = RowKey(message.id, user.id, channel)
        if isinstance(parts, TemplateError):
            plan.rows.append(RowState(key, _FAILED, Reason.TEMPLATE_ERROR, str(parts)))
            return
        if channel == Channel.IN_APP:
            plan.rows.append(RowState(key, DeliveryStatus.SENT))
            plan.feed[user.id] = Feed.entry(
                user.id, message.id, message.version, parts[channel], message.state, category)
            return
        if not user.preferences.wants(channel, category, self._critical):
            plan.rows.append(RowState(key, _SKIPPED, Reason.OPTED_OUT))
            return
        try:
            addresses = self._addresses(user, channel)
        except InvalidContact as exc:
            plan.rows.append(RowState(key, _SKIPPED, Reason.INVALID_CONTACT, str(exc)))
            return
        if not addresses:
            plan.rows.append(RowState(key, _SKIPPED, Reason.NO_CONTACT))
            return
        if release is not None:
            until = datetime.fromtimestamp(release / 1e6, UTC).isoformat().replace("+00:00", "Z")
            plan.rows.append(RowState(key, DeliveryStatus.PENDING, Reason.QUIET_HOURS,
                                      f"quiet hours until {until}"))
            plan.deferred.setdefault(release, {}).setdefault(user.id, set()).add(channel)
            return
        plan.rows.append(RowState(key, DeliveryStatus.PENDING))
        unsubscribe = self._unsubscribe_url(user.id, channel, category)
        plan.sends[key] = [
            Message(channel, to, parts[channel], message.id, user.id, category,
                    _push_data(message), unsubscribe)
            for to in addresses
        ]

    def _unsubscribe_url(self, user_id: str, channel: str, category: str) -> str | None:
        """Email only, and not for critical categories (those can't be switched off)."""
        if self._links is None or channel != Channel.EMAIL or category in self._critical:
            return None
        return self._links.url(user_id, category)

    def _addresses(self, user: UserRecord, channel: str) -> list[str]:
        if channel == Channel.EMAIL:
            return [normalize_email(user.email)] if user.email else []
        if channel == Channel.SMS:
            return [normalize_phone(user.phone, self._phone_region)] if user.phone else []
        return [d.token for d in user.devices if d.active]


def _suppress(plan: ChunkPlan, suppressed: frozenset[str]) -> None:
    """Email rows to a suppressed address (``suppressed``: lower-cased addresses, see
    ``store.suppressions``) become ``skipped``/``suppressed``, without a provider call."""
    for i, row in enumerate(plan.rows):
        sends = plan.sends.get(row.key)
        if row.key.channel == Channel.EMAIL and sends and all(m.to.lower() in suppressed for m in sends):
            plan.rows[i] = RowState(row.key, _SKIPPED, Reason.SUPPRESSED,
                                    f"{sends[0].to} is on the suppression list")
            del plan.sends[row.key]


def _push_data(message: ChunkMessage) -> dict[str, str]:
    data = {"notification_id": message.id, "version": str(message.version)}
    if message.state is not None:
        data["state"] = message.state
    return data


class _Renders:
    """Each locale's rendering, done once per chunk."""

    def __init__(self, templates: TemplateRegistry, message: ChunkMessage, category: str,
                 channels: list[str]) -> None:
        self._templates = templates
        self._message = message
        self._category = category
        self._channels = channels
        self._cache: dict[str | None, dict[str, dict[str, str]] | TemplateError] = {}

    def for_locale(self, locale: str | None) -> dict[str, dict[str, str]] | TemplateError:
        if locale not in self._cache:
            self._cache[locale] = self._render(locale)
        return self._cache[locale]

    def _render(self, locale: str | None) -> dict[str, dict[str, str]] | TemplateError:
        context = render_context(self._message, self._category, locale)
        try:
            rendered = self._templates.render(self._message.template, self._channels, context, locale)
        except TemplateError as exc:
            return exc
        return {channel: bounded(channel, parts) for channel, parts in rendered.items()}
