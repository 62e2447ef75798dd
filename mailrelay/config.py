"""Every MAILRELAY_* setting, in one table, read once and validated at start.

A process that would run with a bad setting stops instead, with an error that names the
variable. ``Settings`` is frozen; secrets never appear in its ``repr``.

Redis database numbers are assigned here and nowhere else: the broker uses the
database in ``MAILRELAY_BROKER_URL`` (0 by default), results 1, mailrelay's own keys
(locks, token cache, rate limits, rollout state, sink faults) 2.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mailrelay import outcome_target
from mailrelay.errors import ConfigError

PREFIX = "MAILRELAY_"


def _url(*schemes: str) -> Callable[[str], str]:
    def coerce(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ValueError(f"expected a URL with scheme {' or '.join(schemes)}")
        if not parts.netloc and not parts.scheme.startswith("sqlite"):
            raise ValueError("expected a host in the URL")
        return raw

    return coerce


def _number(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    noun = "a whole number" if kind is int else "a number"

    def coerce(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {noun}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return coerce


def _int(low: int, high: int) -> Callable[[str], int]:
    return _number(int, low, high)


def _float(low: float, high: float) -> Callable[[str], float]:
    return _number(float, low, high)


def _choice(*options: str) -> Callable[[str], str]:
    def coerce(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return coerce


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a non-empty value")
    return raw.strip()


def _word_list(raw: str) -> str:
    """A comma- or space-separated list of tokens (extensions, content types), normalized."""
    words = [w.strip().lower().lstrip(".") for w in raw.replace(",", " ").split()]
    for word in words:
        if not all(c.isalnum() or c in "/+-._" for c in word):
            raise ValueError(f"unexpected characters in {word!r}")
    return ",".join(words)


def _database_url(raw: str) -> str:
    """SQLite, or PostgreSQL through psycopg2, the driver mailrelay ships. SQLAlchemy reads
    a bare ``postgresql://`` as psycopg 3, which is not installed; ``postgres://`` (Heroku's
    and libpq's spelling) it does not read at all: both mean psycopg2 here."""
    scheme, sep, rest = raw.partition("://")
    if scheme in ("postgresql", "postgres"):
        raw = f"postgresql+psycopg2{sep}{rest}"
    elif scheme.startswith(("postgresql+", "postgres+")) and scheme != "postgresql+psycopg2":
        raise ValueError("mailrelay ships the psycopg2 driver: write postgresql://... "
                         "(or postgresql+psycopg2://...)")
    return _url("sqlite", "postgresql+psycopg2")(raw)


def _outcome_name(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    def coerce(raw: str) -> str:
        value = raw.strip()
        reason = problem(value) if value else None
        if reason:
            raise ValueError(reason)
        return value

    return coerce


def _optional_url(*schemes: str) -> Callable[[str], str]:
    strict = _url(*schemes)
    return lambda raw: "" if raw == "" else strict(raw)


def default_sqlite_path() -> Path:
    """Where the outbox lives when MAILRELAY_DATABASE_URL is unset: one absolute place per
    user (XDG's data directory), so that an intake started in one directory and a worker
    started in another share one outbox instead of each making its own file."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser().resolve() / "mailrelay" / "mailrelay.db"


def _default_database_url() -> str:
    return f"sqlite:///{default_sqlite_path()}"


@dataclass(frozen=True)
class Setting:
    """One row of the table: attribute, coercion, default (a string, as it would be set)."""

    attr: str
    coerce: Callable[[str], Any]
    default: str | Callable[[], str]
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return PREFIX + self.attr.upper()


_REDIS = ("redis", "rediss")
_TEN_YEARS = 10 * 365 * 86400
_HTTP = ("http", "https")

TABLE: tuple[Setting, ...] = (
    # Services
    Setting("broker_url", _url(*_REDIS, "amqp", "amqps"), "redis://127.0.0.1:6379/0",
            "Celery broker: Redis, or RabbitMQ (amqp://; quorum queues, publisher confirms)"),
    Setting("result_backend", _url(*_REDIS), "redis://127.0.0.1:6379/1",
            "where mailrelay.send keeps its return value for producers that wait on it"),
    Setting("redis_url", _url(*_REDIS), "redis://127.0.0.1:6379/2",
            "mailrelay's own keys: locks, token cache, rate limits, rollout state, sink faults"),
    Setting("database_url", _database_url, _default_database_url,
            "the outbox: SQLite file by default, PostgreSQL in production (postgresql:// and "
            "postgres:// go through psycopg2)"),
    Setting("prometheus_url", _optional_url(*_HTTP), "",
            "Prometheus HTTP API the rollout controller queries; unset: every evaluation holds"),
    Setting("prometheus_timeout", _float(0.1, 120), "5",
            "seconds a Prometheus query may take before the rollout controller holds"),
    # A contract name read by work still to come (metric export); validated already.
    Setting("pushgateway_url", _optional_url(*_HTTP), "", "Pushgateway for beat's metric export"),
    Setting("export_interval", _float(1, 3600), "30",
            "seconds between beat's metric exports to the Pushgateway"),
    Setting("rollout_interval", _float(1, 3600), "60",
            "seconds between rollout controller runs (beat)"),
    Setting("secret_key", str, "", "Fernet key(s), comma-separated, newest first", secret=True),
    Setting("metrics_port", _int(0, 65535), "0", "workers serve /metrics here; 0 turns it off"),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "info", "log level"),
    Setting("db_pool_size", _int(1, 64), "2", "database connections kept per process"),
    # Delivery
    Setting("lease_seconds", _int(10, 3600), "20",
            "how long a claim on a message lasts; renewed while its send runs, so a dead "
            "worker's message is taken over soon"),
    Setting("provider_timeout", _float(1, 600), "30",
            "seconds a provider HTTP call may take (HTTP providers; the lease must exceed it)"),
    Setting("visibility_timeout", _int(60, 86400), "900",
            "seconds before Redis redelivers an unacked task; above lease + countdown bound"),
    Setting("countdown_max", _int(1, 300), "60",
            "longest retry wait kept as a Celery countdown; longer waits are parked in the DB"),
    Setting("delivery_limit", _int(2, 1000), "20",
            "RabbitMQ: deliveries of one task before its queue dead-letters it to mailrelay.dead"),
    Setting("broker_consumer_timeout", _int(60, 86400), "1800",
            "RabbitMQ's consumer_timeout in seconds, as the server is set (its default: "
            "30 min); must exceed every task's hard time limit"),
    Setting("verify_settle_seconds", _float(0, 600), "15",
            "after an attempt of unknown outcome, seconds before the provider is asked whether "
            "it sent (its lookups lag behind a send)"),
    Setting("verify_recheck_seconds", _float(0, 60), "5",
            "seconds between the two lookups that must both miss before a message is resent"),
    Setting("max_takeovers", _int(0, 100), "3",
            "takeovers from workers that died mid-attempt before a message fails as worker_lost"),
    Setting("intake_time_limit", _int(5, 600), "30",
            "seconds mailrelay.send may work on one request before it is rejected as "
            "intake_timeout (Celery's soft time limit; the process is killed 15 s later)"),
    Setting("deliver_time_limit", _int(60, 86400), "900",
            "seconds one delivery attempt may take before it ends with its outcome unknown "
            "(soft time limit; the process is killed 60 s later)"),
    Setting("reconcile_after", _int(10, 86400), "120",
            "seconds a message may sit untouched (queued, due, or with an expired lease) before "
            "the reconciler re-enqueues it"),
    # Outcome notifications (mailrelay/notify.py)
    Setting("notify_task", _outcome_name(outcome_target.task_problem), "",
            "the task published with every message's outcome unless the message names its own "
            "`notify`; set with MAILRELAY_NOTIFY_QUEUE, or neither"),
    Setting("notify_queue", _outcome_name(outcome_target.queue_problem), "",
            "the queue MAILRELAY_NOTIFY_TASK is published to"),
    Setting("notify_retry_after", _float(1, 3600), "30",
            "seconds an outcome notification may stay unpublished before the reconciler "
            "publishes it (again); doubles per failed try, up to 10 minutes"),
    Setting("retry_max_attempts", _int(1, 100), "10", "attempts before a retryable error fails"),
    Setting("retry_max_age", _int(60, 7 * 86400), "86400", "seconds after intake that retries stop"),
    Setting("idempotency_retention", _int(60, 90 * 86400), "86400",
            "seconds an idempotency key is remembered (at least MAILRELAY_RETRY_MAX_AGE)"),
    Setting("payload_retention", _int(3600, _TEN_YEARS), str(7 * 86400),
            "seconds a sent, failed or rejected message keeps its payload after it ended; "
            "after it, the content is dropped (hash, size, ids, attempts and audit stay) and "
            "the message can no longer be replayed"),
    Setting("row_retention", _int(3600, _TEN_YEARS), str(90 * 86400),
            "seconds a sent, failed or rejected message, its attempts and audit are kept after "
            "it ended (at least MAILRELAY_PAYLOAD_RETENTION and MAILRELAY_IDEMPOTENCY_RETENTION)"),
    Setting("retry_base", _float(0.1, 600), "2", "first backoff step, seconds"),
    Setting("retry_cap", _float(1, 86400), "900", "longest backoff step, seconds"),
    Setting("max_message_bytes", _int(1024, 200 * 1024 * 1024), str(36 * 1024 * 1024),
            "largest message accepted at intake, whatever the provider"),
    Setting("sink_latency_ms", _int(0, 60_000), "0",
            "the sink provider waits this long per send, standing in for a provider round trip"),
    Setting("operator", str, "", "name recorded in the audit table for CLI actions (default: $USER)"),
    # Content policy, applied at intake
    Setting("html_policy", _choice("off", "sanitize"), "sanitize",
            "producer HTML: `sanitize` removes scripts, handlers, frames, forms (per account: "
            "`accounts set --html-policy`)"),
    Setting("blocked_extensions", _word_list, "",
            "attachment extensions refused with attachment_blocked, comma-separated; empty: "
            "the usual executable set (Gmail's list); `none`: nothing"),
    Setting("blocked_content_types", _word_list, "",
            "attachment content types refused with attachment_blocked; empty: executable "
            "types; `none`: nothing"),
    # Provider endpoints: the real ones by default; the emulator's in tests and the demo.
    Setting("gmail_api_url", _url(*_HTTP), "https://gmail.googleapis.com", "Gmail API base URL"),
    Setting("google_token_url", _url(*_HTTP), "https://oauth2.googleapis.com/token",
            "Google OAuth token endpoint"),
    Setting("google_auth_url", _url(*_HTTP), "https://accounts.google.com/o/oauth2/v2/auth",
            "Google OAuth consent page"),
    Setting("graph_api_url", _url(*_HTTP), "https://graph.microsoft.com/v1.0", "Microsoft Graph base URL"),
    Setting("graph_save_to_sent_items", _bool, "true",
            "keep a Sent Items copy; the exactly-once lookup needs it (off: unknown outcomes resend)"),
    Setting("ms_authority_host", _url(*_HTTP), "https://login.microsoftonline.com",
            "Entra ID authority host (MSAL authority = host/tenant)"),
    Setting("token_refresh_margin", _int(0, 3000), "300",
            "seconds before expiry that a cached access token counts as expired"),
    # Inputs of `mailrelay accounts add`, here so that they are documented with the rest;
    # never taken from argv, where other users of the machine could read them.
    Setting("client_secret", str, "", "OAuth client secret for `accounts add`", secret=True),
    Setting("refresh_token", str, "", "OAuth refresh token for `accounts add`", secret=True),
    # Flower
    Setting("flower_auth", str, "", "Flower basic auth as user:password (required to start Flower)",
            secret=True),
    Setting("flower_port", _int(1, 65535), "5555", "Flower's port"),
)

_BY_ENV = {setting.env: setting for setting in TABLE}


@dataclass(frozen=True)
class Settings:
    """Every setting, typed. ``repr`` hides secrets and the passwords inside URLs."""

    broker_url: str
    result_backend: str
    redis_url: str
    database_url: str
    prometheus_url: str
    prometheus_timeout: float
    pushgateway_url: str
    export_interval: float
    rollout_interval: float
    secret_key: str = field(repr=False)
    metrics_port: int
    log_level: str
    db_pool_size: int
    lease_seconds: int
    provider_timeout: float
    intake_time_limit: int
    deliver_time_limit: int
    verify_settle_seconds: float
    verify_recheck_seconds: float
    max_takeovers: int
    visibility_timeout: int
    countdown_max: int
    delivery_limit: int
    broker_consumer_timeout: int
    reconcile_after: int
    notify_task: str
    notify_queue: str
    notify_retry_after: float
    retry_max_attempts: int
    retry_max_age: int
    idempotency_retention: int
    payload_retention: int
    row_retention: int
    retry_base: float
    retry_cap: float
    max_message_bytes: int
    sink_latency_ms: int
    operator: str
    html_policy: str
    blocked_extensions: str
    blocked_content_types: str
    gmail_api_url: str
    google_token_url: str
    google_auth_url: str
    graph_api_url: str
    graph_save_to_sent_items: bool
    ms_authority_host: str
    token_refresh_margin: int
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    flower_auth: str = field(repr=False)
    flower_port: int

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            if not item.repr:
                continue
            value = getattr(self, item.name)
            if isinstance(value, str) and "://" in value:
                value = mask_url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; raise ConfigError naming the first bad variable."""
    env = os.environ if environ is None else environ
    for name in env:
        if name.startswith(PREFIX) and name not in _BY_ENV:
            hint = difflib.get_close_matches(name, list(_BY_ENV), n=1)
            suggestion = f"; did you mean {hint[0]}?" if hint else ""
            raise ConfigError(f"{name} is not a mailrelay setting{suggestion}")
    values: dict[str, Any] = {}
    for setting in TABLE:
        raw = env.get(setting.env)
        if raw is None:
            raw = setting.default() if callable(setting.default) else setting.default
        try:
            values[setting.attr] = setting.coerce(raw)
        except ValueError as err:
            shown = "(hidden)" if setting.secret else repr(mask_url(raw))
            raise ConfigError(f"{setting.env}={shown}: {err}") from None
    settings = Settings(**values)
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    if settings.visibility_timeout <= settings.lease_seconds + settings.countdown_max:
        # A countdown task held unacked past the visibility timeout is delivered twice.
        raise ConfigError(
            "MAILRELAY_VISIBILITY_TIMEOUT must exceed MAILRELAY_LEASE_SECONDS + "
            "MAILRELAY_COUNTDOWN_MAX"
        )
    longest_hold = max(settings.deliver_time_limit + 60, settings.intake_time_limit + 15)
    if is_amqp(settings.broker_url) and settings.broker_consumer_timeout <= longest_hold:
        # RabbitMQ closes the channel of a consumer that holds a task unacknowledged longer,
        # and requeues every task on it: each runs again and counts towards the delivery
        # limit. A task is held until its hard time limit at most (countdowns wait in the
        # broker, with native delayed delivery).
        raise ConfigError(
            "MAILRELAY_BROKER_CONSUMER_TIMEOUT must exceed MAILRELAY_DELIVER_TIME_LIMIT + 60 "
            "and MAILRELAY_INTAKE_TIME_LIMIT + 15 (each task's hard time limit)"
        )
    if bool(settings.notify_task) != bool(settings.notify_queue):
        raise ConfigError("MAILRELAY_NOTIFY_TASK and MAILRELAY_NOTIFY_QUEUE go together: set both "
                          "or neither")
    if settings.retry_cap < settings.retry_base:
        raise ConfigError("MAILRELAY_RETRY_CAP must be at least MAILRELAY_RETRY_BASE")
    if settings.idempotency_retention < settings.retry_max_age:
        # A producer retrying while mailrelay still retries must find the first message.
        raise ConfigError("MAILRELAY_IDEMPOTENCY_RETENTION must be at least MAILRELAY_RETRY_MAX_AGE")
    if settings.row_retention < settings.payload_retention:
        # The payload goes first: a row deleted sooner takes its payload with it, and
        # MAILRELAY_PAYLOAD_RETENTION would promise a replay window that is not there.
        raise ConfigError("MAILRELAY_ROW_RETENTION must be at least MAILRELAY_PAYLOAD_RETENTION")
    if settings.row_retention < settings.idempotency_retention:
        # A deleted message cannot answer for its key: a producer's repeat inside the key's
        # retention would become a second message, and a second send.
        raise ConfigError(
            "MAILRELAY_ROW_RETENTION must be at least MAILRELAY_IDEMPOTENCY_RETENTION")


def is_amqp(broker_url: str) -> bool:
    """Whether the broker is RabbitMQ (else Redis)."""
    return urlsplit(broker_url).scheme in ("amqp", "amqps", "pyamqp")


def mask_url(value: str) -> str:
    """A URL with its password replaced, fit for a log line or an error."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded on first use."""
    return load()


def describe() -> list[dict[str, str]]:
    """The table as data, for `mailrelay --help` style listings and the README."""
    rows = []
    for setting in TABLE:
        default = (setting.default if isinstance(setting.default, str)
                   else "sqlite:///$XDG_DATA_HOME/mailrelay/mailrelay.db")
        rows.append({"variable": setting.env, "default": default, "meaning": setting.help})
    return rows


assert {f.name for f in fields(Settings)} == {s.attr for s in TABLE}, "table and Settings differ"


def operator_name(settings: Settings) -> str:
    """Who an operator action is recorded as: MAILRELAY_OPERATOR, else the login name."""
    import getpass

    if settings.operator:
        return settings.operator
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
