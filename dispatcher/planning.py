"""Planning one chunk: what each (recipient, channel) should become, decided per chunk.

Inputs are the chunk message, its template, and the recipients' records loaded in one go;
no I/O happens here. For each recipient and channel the plan says: skip (with the reason),
fail (a template error), deliver in-app, or send these provider messages. Contact data is
validated again here, since it may predate a rule change or come from outside the API.

Rendering: a part that uses neither ``user`` nor a key of the recipient's own data (what the
part uses is read from its AST when the template is loaded, :attr:`~dispatcher.rendering.Part.variables`)
is rendered once per locale per chunk and shared; only the parts that need it are rendered per
recipient. A render error fails that recipient's rows (every channel, ``template_error`` with
the message naming the part; for a shared part, every recipient of that locale): never the chunk.

The unsubscribe and preference-centre links differ per recipient but should not make the email
per recipient: the context's ``unsubscribe_url`` and ``preferences_url`` are placeholders
(:data:`UNSUBSCRIBE_PLACEHOLDER`, :data:`PREFERENCES_PLACEHOLDER`) replaced by the recipient's
own links after rendering (a preference link is minted only for a part that has its placeholder).

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
from dispatcher.errors import ChannelNotInTemplate, InvalidContact, TemplateError, UnknownTemplate
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
from dispatcher.rendering import Part, TemplateInfo, TemplateRegistry, TemplateSet
from dispatcher.unsubscribe import UnsubscribeLinks

__all__ = ["ChunkPlan", "ChannelSets", "Planner", "UNSUBSCRIBE_PLACEHOLDER", "category_of",
           "channel_sets", "header_update", "render_context", "trial_context", "trial_parts",
           "trial_render", "user_context",
           "PREFERENCES_PLACEHOLDER"]

#: What ``unsubscribe_url`` renders as; each recipient's link replaces it. Letters, digits and
#: ``:/.-`` only, so HTML autoescaping leaves it as it is.
UNSUBSCRIBE_PLACEHOLDER = "https://unsubscribe.dispatcher.invalid/link"
#: What ``preferences_url`` renders as (the recipient's preference-centre link replaces it).
PREFERENCES_PLACEHOLDER = "https://preferences.dispatcher.invalid/link"

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


def render_context(message: ChunkMessage, category: str, locale: str | None,
                   unsubscribe: bool = False, preferences: bool = False) -> dict[str, Any]:
    """What a template sees: the notification's data, plus its state, category, id, locale,
    ``unsubscribe_url`` and ``preferences_url`` (placeholders when email carries such links,
    else None)."""
    return {**message.data, "state": message.state, "category": category,
            "notification_id": message.id, "locale": locale,
            "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER if unsubscribe else None,
            "preferences_url": PREFERENCES_PLACEHOLDER if preferences else None}


def user_context(user: UserRecord) -> dict[str, Any]:
    """``user`` as a template sees it (a recipient with no record: only ``id`` is set)."""
    return {"id": user.id, "name": user.name, "locale": user.locale, "timezone": user.timezone,
            "attributes": dict(user.attributes)}


def trial_parts(templates: TemplateSet, message: ChunkMessage, channels: list[str],
                personal_keys: frozenset[str]) -> list[Part]:
    """What the gateway's check of a request renders: for the request's locale, every part
    that is the same for all its recipients (uses neither ``user`` nor any of
    ``personal_keys``, the keys some recipient's own data has). Those would fail for everyone.
    The other parts may fail for some recipients only, which fails their rows alone. Each
    part returned reads known variables (:attr:`~dispatcher.rendering.Part.variables`)."""
    return [part for channel in channels
            for part in templates.resolve(message.template, channel, message.locale).values()
            if not part.personal and not part.uses_any(personal_keys)]


def trial_context(message: ChunkMessage, category: str) -> dict[str, Any]:
    """The context of the gateway's check (:func:`trial_parts`)."""
    return render_context(message, category, message.locale, unsubscribe=True, preferences=True)


def trial_render(parts: Sequence[Part], context: Mapping[str, Any]) -> None:
    """Render ``parts`` (:func:`trial_parts`) in ``context``; raises TemplateError."""
    for part in parts:
        part.render(context)


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
        channels = sorted(sets.all)
        links = self._links is not None and category not in self._critical
        renders = _Renders(self._templates.current(), message, category, channels, links,
                           preferences=self._links is not None)
        plan = ChunkPlan(message, sets, category=category,
                         caps=() if category in self._critical else self._caps.for_category(category))
        now = self._clock()
        for user_id in plan.users:
            user = users.get(user_id) or UserRecord(id=user_id)
            parts = renders.for_recipient(user, message.data_for(user_id))
            failed = next((p for p in parts.values() if isinstance(p, TemplateError)), None)
            if failed is not None:  # one broken part fails all of this recipient's rows, loudly
                parts = dict.fromkeys(parts, failed)
            unsubscribe = self._links.url(user.id, category) if links and self._links else None
            release = self._quiet_until(user, category, now)
            for channel in channels:
                self._plan_one(plan, category, user, channel, parts[channel], unsubscribe, release)
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
                  parts: dict[str, str] | TemplateError, unsubscribe: str | None,
                  release: int | None) -> None:
        message = plan.message
        key = RowKey(message.id, user.id, channel)
        if isinstance(parts, TemplateError):
            plan.rows.append(RowState(key, _FAILED, Reason.TEMPLATE_ERROR, str(parts)))
            return
        parts = _with_link(parts, unsubscribe)
        if any(PREFERENCES_PLACEHOLDER in text for text in parts.values()):
            link = self._links.preferences_url(user.id) if self._links else None
            parts = {name: text.replace(PREFERENCES_PLACEHOLDER, link or "")
                     for name, text in parts.items()}
        if channel == Channel.IN_APP:
            plan.rows.append(RowState(key, DeliveryStatus.SENT))
            plan.feed[user.id] = Feed.entry(
                user.id, message.id, message.version, parts, message.state, category)
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
        header_link = unsubscribe if channel == Channel.EMAIL else None
        plan.sends[key] = [
            Message(channel, to, parts, message.id, user.id, category,
                    _push_data(message), header_link)
            for to in addresses
        ]

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


def _with_link(parts: dict[str, str], link: str | None) -> dict[str, str]:
    """``parts`` with the unsubscribe placeholder replaced by the recipient's link (or removed)."""
    if not any(UNSUBSCRIBE_PLACEHOLDER in text for text in parts.values()):
        return parts
    return {name: text.replace(UNSUBSCRIBE_PLACEHOLDER, link or "") for name, text in parts.items()}


def _push_data(message: ChunkMessage) -> dict[str, str]:
    data = {"notification_id": message.id, "version": str(message.version)}
    if message.state is not None:
        data["state"] = message.state
    return data


_Rendered = dict[str, str] | TemplateError
_RESERVED = ("state", "category", "notification_id", "locale", "unsubscribe_url", "preferences_url")


class _Renders:
    """One chunk's renders: shared parts once per locale, the others per recipient."""

    def __init__(self, templates: TemplateSet, message: ChunkMessage, category: str,
                 channels: list[str], links: bool, *, preferences: bool = False) -> None:
        self._templates = templates
        self._message = message
        self._category = category
        self._channels = channels
        self._links = links
        self._preferences = preferences
        self._parts: dict[str | None, dict[str, dict[str, Part] | TemplateError]] = {}
        self._contexts: dict[str | None, dict[str, Any]] = {}
        self._shared: dict[tuple[str | None, str, str], str | TemplateError] = {}
        self._whole: dict[tuple[str | None, str], _Rendered] = {}

    def for_recipient(self, user: UserRecord,
                      data: Mapping[str, Any] | None) -> dict[str, _Rendered]:
        """Each channel's parts for this recipient (bounded per channel), or its TemplateError."""
        locale = user.locale or self._message.locale
        resolved = self._resolved(locale)
        keys = data.keys() if data else ()
        context: dict[str, Any] | None = None
        out: dict[str, _Rendered] = {}
        for channel in self._channels:
            parts = resolved[channel]
            if isinstance(parts, TemplateError):
                out[channel] = parts
            elif not any(p.personal or (keys and p.uses_any(keys)) for p in parts.values()):
                out[channel] = self._whole_channel(locale, channel, parts)
            else:
                if context is None:
                    context = self._personal_context(locale, user, data)
                out[channel] = self._personal(locale, channel, parts, context, keys)
        return out

    def _personal_context(self, locale: str | None, user: UserRecord,
                          data: Mapping[str, Any] | None) -> dict[str, Any]:
        """The notification's data, the recipient's over it, then the fields no data overrides."""
        base = self._context(locale)
        if not data:
            return {**base, "user": user_context(user)}
        return {**base, **data, **{k: base[k] for k in _RESERVED}, "user": user_context(user)}

    def _personal(self, locale: str | None, channel: str, parts: dict[str, Part],
                  context: dict[str, Any], keys: Any) -> _Rendered:
        texts: dict[str, str] = {}
        try:
            for name, part in parts.items():
                if part.personal or (keys and part.uses_any(keys)):
                    texts[name] = part.render(context)
                else:
                    texts[name] = self._shared_part(locale, channel, name, part)
        except TemplateError as exc:
            return exc
        return bounded(channel, texts)

    def _whole_channel(self, locale: str | None, channel: str, parts: dict[str, Part]) -> _Rendered:
        key = (locale, channel)
        if key not in self._whole:
            try:
                texts = {name: self._shared_part(locale, channel, name, part)
                         for name, part in parts.items()}
                self._whole[key] = bounded(channel, texts)
            except TemplateError as exc:
                self._whole[key] = exc
        return self._whole[key]

    def _shared_part(self, locale: str | None, channel: str, name: str, part: Part) -> str:
        key = (locale, channel, name)
        if key not in self._shared:
            try:
                self._shared[key] = part.render(self._context(locale))
            except TemplateError as exc:
                self._shared[key] = exc
        text = self._shared[key]
        if isinstance(text, TemplateError):
            raise text
        return text

    def _context(self, locale: str | None) -> dict[str, Any]:
        if locale not in self._contexts:
            self._contexts[locale] = render_context(self._message, self._category, locale,
                                                    unsubscribe=self._links,
                                                    preferences=self._preferences)
        return self._contexts[locale]

    def _resolved(self, locale: str | None) -> dict[str, dict[str, Part] | TemplateError]:
        if locale not in self._parts:
            resolved: dict[str, dict[str, Part] | TemplateError] = {}
            for channel in self._channels:
                try:
                    resolved[channel] = self._templates.resolve(self._message.template, channel, locale)
                except (ChannelNotInTemplate, UnknownTemplate) as exc:
                    # The templates were reloaded between the chunk's check and its plan.
                    resolved[channel] = TemplateError(str(exc))
            self._parts[locale] = resolved
        return self._parts[locale]
