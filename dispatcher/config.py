"""Settings, read once from ``DISPATCHER_*`` environment variables at the edge (the CLI or a test).

Also from a ``.env`` file in the working directory (``KEY=value`` lines, the same names);
a variable set in the environment wins over the file.

Nothing below the edge reads ``os.environ``: components receive a :class:`Settings` or the
values they need. Every field is documented in the README's configuration table.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dispatcher.cpu_quota import available_cpus
from dispatcher.errors import ConfigurationError
from dispatcher.frequency import FrequencyCaps
from dispatcher.quiet_hours import QuietHours
from dispatcher.templates_path import shipped_templates

__all__ = ["ConfigurationError", "Settings", "SHIPPED_TEMPLATES"]

#: The shipped ``templates/`` (package data ``dispatcher_templates`` in a wheel; the checkout's
#: folder in an editable install): see :mod:`dispatcher.templates_path`.
SHIPPED_TEMPLATES = shipped_templates()


def _comma_separated(value: Any) -> Any:
    """``"a, b,,c"`` -> ``{"a", "b", "c"}``; a set or list given in code passes as it is."""
    if isinstance(value, str):
        return frozenset(part.strip() for part in value.split(",") if part.strip())
    return value


#: ``DISPATCHER_QUEUE_URL`` values naming the queue in the store's database.
DATABASE_QUEUE = frozenset({"database", "sqlite"})

#: A set of names, written in the environment as ``a,b,c``.
Names = Annotated[frozenset[str], NoDecode, BeforeValidator(_comma_separated)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISPATCHER_", extra="ignore", populate_by_name=True,
                                      env_file=".env", env_file_encoding="utf-8")

    database_url: str = "sqlite:///./dispatcher.db"
    #: ``database``: the queue is a table in the store's database (SQLite or PostgreSQL);
    #: ``sqlite`` is its former name. Otherwise an SQS queue URL.
    queue_url: str = "database"
    #: SQLite ``PRAGMA synchronous``: FULL survives power loss; NORMAL survives a killed process.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    redis_url: str | None = None
    #: Internal: set by ``dispatcher serve`` for its worker processes (their live events go to
    #: the API process through this pipe; see ``dispatcher.bus.pipe``).
    bus_fd: int | None = None

    email_provider: Literal["log", "ses"] = "log"
    sms_provider: Literal["log", "sns"] = "log"
    push_provider: Literal["log", "fcm"] = "log"
    email_from: str | None = None
    #: SES configuration set for sending events (bounces, complaints), optional.
    ses_configuration_set: str | None = None
    #: SNS ``AWS.SNS.SMS.SenderID`` (alphanumeric sender, where the country allows it).
    sms_sender_id: str | None = None
    #: Categories sent as ``Promotional`` SMS; every other category is ``Transactional``.
    sms_promotional_categories: Names = frozenset({"marketing"})
    fcm_project_id: str | None = None
    fcm_endpoint: str = "https://fcm.googleapis.com"
    #: The FCM service-account file (read from ``GOOGLE_APPLICATION_CREDENTIALS``, no prefix).
    google_application_credentials: Path | None = Field(
        default=None, validation_alias="GOOGLE_APPLICATION_CREDENTIALS")
    #: Base URL of this dispatcher as the public reaches it (for unsubscribe links in email).
    public_url: str | None = None
    #: HMAC key of unsubscribe links; unset: derived from the user token secret.
    unsubscribe_secret: str | None = None
    #: Where the ``log`` providers append what they would have sent (JSON lines); unset: the log only.
    log_provider_path: Path | None = None

    #: ``service:key,service2:key2``. Unset: a development key for service ``dev`` is printed at start.
    api_keys: str | None = None
    #: HS256 secret for end-user JWTs. Unset: a random one per process (user tokens then can't be minted).
    user_token_secret: str | None = None
    #: Longest user-token lifetime accepted, in seconds: a token whose ``exp`` is further ahead
    #: (or not a number) is a 401.
    user_token_max_lifetime: float = Field(default=30 * 86400, gt=0)
    #: Longest life of a preference-centre link (``POST /v1/users/{id}/preference-link``), in
    #: seconds; a request may ask for less.
    preference_link_lifetime: float = Field(default=7 * 86400, gt=0, le=90 * 86400)
    #: Life of a live-feed stream token (``?stream_token=`` for browsers' EventSource), in
    #: seconds: it only has to last until the stream opens.
    stream_token_lifetime: float = Field(default=60, gt=0, le=3600)
    #: Web origins allowed to call the API from a browser (the embeddable inbox on an app's own
    #: site), comma-separated, e.g. ``https://app.example.com``. Empty: same origin only.
    cors_origins: Names = frozenset()
    templates_dir: Path = SHIPPED_TEMPLATES
    #: Longest time one template part may take to render (the part fails with template_error).
    render_timeout: float = Field(default=1.0, gt=0, le=60)
    #: Largest rendered part, and largest string or list a template may build, in characters.
    render_max_chars: int = Field(default=1_000_000, ge=1000)

    #: Largest request body, in bytes: a larger one is a 413 before authentication or parsing.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    #: Largest notification ``data``, as compact UTF-8 JSON, in bytes (else 422 naming ``data``).
    max_data_bytes: int = Field(default=64 * 1024, ge=2)
    #: Deepest nesting of notification ``data`` (``{"a": 1}`` is 1; else 422 naming ``data``).
    max_data_depth: int = Field(default=16, ge=1)

    #: Seconds a client has to send a whole request (headers and body), from connecting for the
    #: first request, from its first byte for later ones; later: 408 and the connection is
    #: closed. Also bounds a silent connection.
    request_read_timeout: float = Field(default=10.0, gt=0)
    #: Seconds an idle keep-alive connection stays open after a response.
    keep_alive_timeout: int = Field(default=5, ge=1)
    #: Connections (or requests in progress) the API serves at once; past that, 503.
    max_connections: int = Field(default=1000, ge=1)

    #: ``text`` (a terminal) or ``json`` (one object per line, with request and notification
    #: ids: see ``dispatcher.observability.logs``).
    log_format: Literal["text", "json"] = "text"
    #: When set, ``GET /metrics`` needs ``Authorization: Bearer <this>``; unset: open, like /healthz.
    metrics_token: str | None = None
    #: ``dispatcher worker`` on its own: serve its metrics on this port (on ``host``); unset: none.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    chunk_size: int = Field(default=500, ge=1, le=10_000)
    worker_concurrency: int = Field(default=4, ge=1)
    #: ``dispatcher serve``: worker processes (the API has a process of its own); unset: one per CPU.
    worker_processes: int | None = Field(default=None, ge=1)
    #: Small messages gathered into one unit of work: at most this many messages (and at most
    #: ``chunk_size`` recipients); while they keep coming (one less than
    #: ``worker_batch_linger`` seconds after the last), waiting that long for more first.
    worker_batch_messages: int = Field(default=64, ge=1, le=1000)
    worker_batch_linger: float = Field(default=0.1, ge=0, le=1)
    send_concurrency: int = Field(default=512, ge=1)
    queue_visibility_timeout: float = Field(default=30.0, gt=0)
    #: Provider rate limits, messages per second across every worker process (unset: none).
    email_rate_limit: float | None = Field(default=None, gt=0, le=100_000)
    sms_rate_limit: float | None = Field(default=None, gt=0, le=100_000)
    push_rate_limit: float | None = Field(default=None, gt=0, le=100_000)
    #: Per-user frequency caps, ``marketing:push=3/1d,marketing:email=1/7d`` (dispatcher.frequency).
    frequency_caps: str | None = None
    #: Quiet hours for users who set none, ``22:00-07:00`` (in each user's timezone); unset: none.
    quiet_hours: str | None = None
    #: The time zone of users who have none (quiet hours are read on its clock).
    default_timezone: str = "UTC"
    #: ``send_at``: how far ahead a notification may be scheduled, in days.
    schedule_horizon_days: float = Field(default=30.0, gt=0, le=366)
    #: How often each worker process looks for scheduled messages that are due (seconds).
    scheduler_poll_interval: float = Field(default=0.5, gt=0, le=60)
    queue_max_receives: int = Field(default=5, ge=1)
    #: How often an idle worker looks at the embedded queue (a read; it takes no write lock).
    queue_poll_interval: float = Field(default=0.05, gt=0)
    #: Longest wait of one receive call (SQS long polling: at most 20).
    queue_wait_seconds: float = Field(default=5.0, ge=0, le=20)
    #: SQS: where poison messages go; unset: the target of the queue's redrive policy.
    dead_letter_queue_url: str | None = None
    #: A ``sending`` row older than this belongs to a crashed worker (see docs on recovery).
    send_lease_seconds: float = Field(default=60.0, gt=0)
    #: What recovery does with such a row: ``fail`` (never a duplicate) or ``resend`` (never a loss).
    recovery: Literal["fail", "resend"] = "fail"
    retry_max_attempts: int = Field(default=5, ge=1)
    retry_base_delay: float = Field(default=0.5, ge=0)
    retry_max_delay: float = Field(default=30.0, ge=0)
    provider_timeout: float = Field(default=10.0, gt=0)

    #: Categories that bypass opt-outs, comma-separated.
    critical_categories: Names = frozenset({"security"})
    #: Services allowed to send those categories, comma-separated; others get 403. Empty: none.
    critical_services: Names = frozenset()
    #: Region used to read phone numbers written without a ``+country`` prefix (e.g. ``KR``).
    default_phone_region: str | None = None

    #: SES events through SNS (``POST /v1/providers/ses/events``): where SNS signing
    #: certificates may be fetched from (a regular expression the whole URL must match).
    sns_cert_url_pattern: str = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^?#]+\.pem"
    #: The SNS topic ARNs whose messages are accepted, comma-separated; empty: none (403).
    sns_topic_arns: Names = frozenset()
    #: Soft bounces of one address within ``soft_bounce_window`` seconds that suppress it.
    soft_bounce_limit: int = Field(default=3, ge=1)
    soft_bounce_window: float = Field(default=7 * 86400, gt=0)
    #: Webhooks out: seconds per attempt, attempts in flight per worker process, backoff
    #: (base doubling up to max) and the period after which a webhook is kept as failed.
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    webhook_retry_base_delay: float = Field(default=5.0, ge=0)
    webhook_retry_max_delay: float = Field(default=3600.0, ge=0)
    webhook_retry_period: float = Field(default=86400.0, ge=0)
    webhook_poll_interval: float = Field(default=1.0, gt=0)
    #: Seconds delivered and failed webhooks stay listed (and replayable) after their last attempt.
    webhook_retention: float = Field(default=7 * 86400, gt=0)
    #: Networks (CIDR, comma-separated) webhook URLs may reach although they are not public
    #: (private, loopback, link-local, …); empty: only public addresses.
    webhook_allowed_networks: Names = frozenset()

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+")):
            raise ValueError("DISPATCHER_DATABASE_URL must be sqlite:///path or postgresql://…")
        return value

    @field_validator("sns_cert_url_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"DISPATCHER_SNS_CERT_URL_PATTERN is not a regular expression: {exc}") from None
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: frozenset[str]) -> frozenset[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"DISPATCHER_WEBHOOK_ALLOWED_NETWORKS: {network!r} is not a CIDR") from None
        return value

    @field_validator("queue_url")
    @classmethod
    def _known_queue(cls, value: str) -> str:
        if value in DATABASE_QUEUE:
            return "database"
        if not value.startswith(("https://", "http://")):
            raise ValueError("DISPATCHER_QUEUE_URL must be 'database' (the queue is a table in the "
                             "store's database, SQLite or PostgreSQL) or an SQS queue URL")
        return value

    def uses_sqs(self) -> bool:
        return self.queue_url not in DATABASE_QUEUE

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str | None) -> str | None:
        if value:
            QuietHours.from_setting(value)  # ValueError names the problem
        return value or None

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Asia/Seoul)") from None
        return value

    def rate_limits(self) -> dict[str, float]:
        return {channel: rate for channel, rate in (("email", self.email_rate_limit),
                                                    ("sms", self.sms_rate_limit),
                                                    ("push", self.push_rate_limit))
                if rate is not None}

    @model_validator(mode="after")
    def _caps(self) -> Settings:
        self.frequency_caps_parsed()  # ValueError names the entry at fault
        return self

    def frequency_caps_parsed(self) -> FrequencyCaps:
        return FrequencyCaps.parse(self.frequency_caps, self.critical_categories)

    def quiet_hours_default(self) -> QuietHours | None:
        return QuietHours.from_setting(self.quiet_hours) if self.quiet_hours else None

    def unsubscribe_key(self) -> str | None:
        return self.unsubscribe_secret or self.user_token_secret

    def service_keys(self) -> dict[str, str]:
        """API key -> service name, from ``api_keys``."""
        keys: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in (self.api_keys or "").split(","))):
            service, sep, key = pair.partition(":")
            if not sep or not service or not key:
                raise ConfigurationError(f"DISPATCHER_API_KEYS: {pair!r} is not 'service:key'")
            keys[key] = service
        return keys

    def process_count(self) -> int:
        """Worker processes of ``dispatcher serve``: the setting, else the CPUs this process
        may really use (its cgroup's quota, not the host's cores: :mod:`dispatcher.cpu_quota`)."""
        return self.worker_processes or available_cpus()

    def with_dev_credentials(self) -> tuple[Settings, list[str]]:
        """Fill unset credentials with development values; return the lines to print."""
        notes: list[str] = []
        update: dict[str, str] = {}
        if not self.api_keys:
            key = secrets.token_urlsafe(24)
            update["api_keys"] = f"dev:{key}"
            notes.append(f"DISPATCHER_API_KEYS is unset: development key for service 'dev': {key}")
        if not self.user_token_secret:
            update["user_token_secret"] = secrets.token_urlsafe(32)
            notes.append("DISPATCHER_USER_TOKEN_SECRET is unset: a random secret is used for this run")
        return self.model_copy(update=update), notes
