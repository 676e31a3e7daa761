"""The core's errors: one tree, mapped to HTTP status codes in one place (``dispatcher.api.errors``).

Every error the core raises on purpose is a :class:`DispatcherError`; anything else is a bug
or an outage (a store or queue that does not answer). The tree, by what the caller can do::

    DispatcherError
    ├── InvalidRequest            the caller's input is wrong: fix it and send again (422)
    │   ├── InvalidContact        an email address or phone number that does not validate
    │   ├── ChannelNotInTemplate  a channel the template has no parts for
    │   ├── TemplateError         a template that cannot be loaded, compiled or rendered
    │   └── InvalidLink           an unsubscribe link that is not valid (400)
    ├── InvalidNotificationId     an id that is not ``<service>#<uuid>`` (400)
    │   └── ForeignNotification   an id of another service (403 when read, 400 when sent)
    ├── InvalidCursor             a pagination cursor this API did not return (400)
    ├── NotFound                  no such resource (404)
    │   └── UnknownTemplate       no template of that name (a LookupError too)
    ├── UntrustedMessage          an inbound provider message whose sender can't be proven (403)
    ├── Unavailable               the queue (or another port) does not answer: retry later (503)
    ├── PoisonMessage             a queue message no worker can ever process: to the DLQ
    ├── ChunkNotSettled           rows stayed claimed by another live worker: retry later
    └── ConfigurationError        settings that can't work (together): the process won't start

Each carries a message that names the problem; :class:`InvalidRequest` also names the field.
Adapters have their own trees (``channels.base`` for providers) and never raise these.
"""

from __future__ import annotations

__all__ = [
    "ChannelNotInTemplate",
    "ChunkNotSettled",
    "ConfigurationError",
    "DispatcherError",
    "ForeignNotification",
    "InvalidContact",
    "InvalidCursor",
    "InvalidLink",
    "InvalidNotificationId",
    "InvalidRequest",
    "NotFound",
    "PoisonMessage",
    "TemplateError",
    "UnknownTemplate",
    "Unavailable",
    "UntrustedMessage",
    "NotificationCancelled",
]


class DispatcherError(Exception):
    """Base of every error the core raises on purpose; ``str()`` is the message."""


class InvalidRequest(DispatcherError, ValueError):
    """Input that can't be accepted; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class InvalidContact(InvalidRequest):
    """An email address or phone number that does not validate (``field`` is email or phone)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ChannelNotInTemplate(InvalidRequest):
    """A requested channel the template has no parts for."""

    def __init__(self, message: str) -> None:
        super().__init__("channels", message)


class TemplateError(InvalidRequest):
    """A template part that cannot be loaded, compiled or rendered (the message names the
    template, the locale folder and the part file)."""

    def __init__(self, message: str) -> None:
        super().__init__("template", message)


class InvalidLink(InvalidRequest):
    """An unsubscribe link that was not made by this dispatcher (or was altered)."""

    def __init__(self, message: str = "this unsubscribe link is not valid") -> None:
        super().__init__("link", message)


class InvalidNotificationId(DispatcherError, ValueError):
    """A notification id that does not follow ``<service>#<uuid>``."""


class ForeignNotification(InvalidNotificationId):
    """A well-formed id that belongs to another service than the caller."""


class InvalidCursor(DispatcherError, ValueError):
    """A pagination cursor this API did not return."""


class NotFound(DispatcherError, LookupError):
    """No such resource."""


class UnknownTemplate(NotFound):
    """No template of that name in the registry."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown template {name!r}")
        self.name = name


class UntrustedMessage(DispatcherError):
    """An inbound provider message (an SNS delivery) that is unsigned, badly signed, signed
    with a certificate from the wrong place, or from a topic we don't trust."""


class NotificationCancelled(DispatcherError):
    """A new version of a notification its service has cancelled: nothing more is sent."""

    def __init__(self, notification_id: str) -> None:
        super().__init__(f"notification {notification_id!r} was cancelled; send a new id")
        self.notification_id = notification_id


class Unavailable(DispatcherError):
    """A port that does not answer (the queue unreachable, throttling us): nothing was done
    that the caller can rely on; the same request may be sent again."""


class PoisonMessage(DispatcherError, ValueError):
    """A queue message the worker can never process; ``str()`` is the reason."""


class ChunkNotSettled(DispatcherError, RuntimeError):
    """Rows of a chunk stayed claimed by another live worker for too long; retry later."""


class ConfigurationError(DispatcherError, ValueError):
    """Settings that can't work (together); the message says which and why."""
