"""Usage events, emit side: one event per authenticated /v1 request, never lost, never counted
twice. The gateway builds a `UsageEventData` (cost already computed) and calls `usage_emit`
(sync code) or `ausage_emit` (async: no blocking call on the event loop).

With REDIS_URL and CELERY_BROKER_URL: one XADD to the stream `aibaas:{usage}:events` (no SQL
on the request path), moved into PostgreSQL by metering.services.usage_drain. Without a
broker, or while Redis's breaker is open (infra/breaker.py): written at once
by metering.services.usage_record. Invariants: an entry leaves the stream only once its row is
committed (never trimmed; Redis must persist it, deploy/redis.conf); duplicates are dropped by
the unique request_id; an event that cannot be stored is logged as replayable JSON.
Why each choice: docs/usage-events.md.
"""

import ipaddress
import json
import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from infra.breaker import redis_breaker
from infra.db import releasing_connections
from infra.redis_clients import REDIS_ERRORS, apipelined, redis_client
from metering import inflight
from metering.sanitize import SMALLINT_MAX, clamp_cost, clamp_int, clean_text

logger = logging.getLogger(__name__)

ENTRY_FIELD = "e"
UNKNOWN = "unknown"  # the model (key id, endpoint) of an event that has none
# (field, column length, value when empty): the strings of an event (metering.UsageEvent).
_TEXT = (
    ("key_id", 32, UNKNOWN),
    ("model", 200, UNKNOWN),
    ("endpoint", 50, UNKNOWN),
    ("error_code", 50, ""),
)
_COUNTS = ("input_tokens", "output_tokens", "latency_ms", "quota_tokens")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEventData:
    """What one /v1 request used and cost; the fields of metering.UsageEvent, by id.

    Always storable, whatever the client sent (metering/sanitize.py): strings lose NUL and lone
    surrogates and are cut to their columns (request_id ≤ 100, key_id ≤ 32, model ≤ 200,
    endpoint and error_code ≤ 50), counts and cost are clamped to their columns' ranges, an
    unparsable client_ip is dropped, a naive created_at is UTC. Only a missing request_id (the
    idempotency key) is refused.

    `billable`: the request was admitted (counted by the limits and the quota); refusals are
    not, and say why in `error_code`. `quota_period` / `quota_generation` / `quota_tokens`: the
    monthly quota counted this request's token estimate `quota_tokens` in that month's counter
    (QuotaDecision.period, .generation); usage_record settles it to the tokens really used, once.
    """

    request_id: str
    organization_id: int
    api_key_id: int | None
    key_id: str
    model: str
    endpoint: str
    status_code: int
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cached: bool = False
    cost: Decimal = Decimal(0)
    latency_ms: int = 0
    upstream_latency_ms: int | None = None
    client_ip: str | None = None
    created_at: datetime = field(default_factory=timezone.now)
    error_code: str = ""
    billable: bool = True
    quota_period: date | None = None
    quota_generation: int = 0
    quota_tokens: int = 0

    def __post_init__(self) -> None:
        request_id = clean_text(self.request_id, 100)
        if not request_id:
            raise ValueError("UsageEventData needs a request_id")
        store = object.__setattr__
        store(self, "request_id", request_id)
        for name, length, empty in _TEXT:
            store(self, name, clean_text(getattr(self, name), length, empty=empty))
        for name in _COUNTS:
            store(self, name, clamp_int(getattr(self, name)))
        store(self, "status_code", clamp_int(self.status_code, SMALLINT_MAX))
        if self.upstream_latency_ms is not None:
            store(self, "upstream_latency_ms", clamp_int(self.upstream_latency_ms))
        store(self, "cost", clamp_cost(self.cost))
        if timezone.is_naive(self.created_at):
            store(self, "created_at", self.created_at.replace(tzinfo=UTC))
        if self.client_ip is not None and not _is_address(self.client_ip):
            store(self, "client_ip", None)
        store(self, "estimated", bool(self.estimated))
        store(self, "cached", bool(self.cached))
        store(self, "billable", bool(self.billable))

    def to_json(self) -> str:
        data = {name: getattr(self, name) for name in _FIELDS}  # asdict() deep-copies: slower
        data["cost"] = str(self.cost)
        data["created_at"] = self.created_at.isoformat()
        if self.quota_period is not None:
            data["quota_period"] = self.quota_period.isoformat()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "UsageEventData":
        data = json.loads(raw)
        data["cost"] = Decimal(data["cost"])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        if data.get("quota_period"):
            data["quota_period"] = date.fromisoformat(data["quota_period"])
        if "billable" not in data:  # written by a release without the field
            data["billable"] = legacy_billable(data["status_code"], data["input_tokens"])
        return cls(**data)


def _is_address(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def legacy_billable(status_code: int, input_tokens: int) -> bool:
    """Whether an event recorded before events said so was admitted: it ran (2xx), failed after
    its admission (499 client gone, 500, 502/504 upstream, 599 interrupted), or used tokens.
    The same rule as migration 0004's backfill."""
    return status_code < 400 or status_code in (499, 500, 502, 504, 599) or input_tokens > 0


_FIELDS = tuple(f.name for f in fields(UsageEventData))


def stream_key() -> str:
    return settings.USAGE_STREAM_KEY


def dead_letter_key(key: str) -> str:
    """`…:events` → `…:dead`: same hash tag, same cluster slot."""
    return key.rsplit(":", 1)[0] + ":dead"


def stream_enabled() -> bool:
    """Events go through the stream only when a Celery worker exists to drain it."""
    return bool(settings.REDIS_URL and settings.CELERY_BROKER_URL)


def _redis_failed(error: Exception, event: "UsageEventData") -> None:
    redis_breaker().failed(error)
    logger.warning("usage event %s written to the database directly (Redis down)", event.request_id)


# --- emit --------------------------------------------------------------------------------------


def _xadd_args(event: UsageEventData) -> tuple[tuple, dict]:
    return (stream_key(), {ENTRY_FIELD: event.to_json()}), {}


def _record(event: UsageEventData) -> None:
    from infra.db import when_unlocked
    from metering.services import usage_record

    try:
        when_unlocked(lambda: usage_record(events=[event]))
    except Exception:
        logger.exception("usage event NOT RECORDED, replay it: %s", event.to_json())
        raise


def usage_emit(event: UsageEventData) -> None:
    """Record one request's usage: to the stream, or the database (see the module docstring)."""
    if stream_enabled() and redis_breaker().usable():
        args, kwargs = _xadd_args(event)
        try:
            redis_client().xadd(*args, **kwargs)
            return
        except REDIS_ERRORS as error:
            _redis_failed(error, event)
    _record(event)


async def ausage_emit(event: UsageEventData) -> None:
    """usage_emit for async code: redis.asyncio for the stream (pipelined with the loop's other
    commands: infra.redis_clients.apipelined), a thread for the database. The request's marker
    in the in-flight registry (metering/inflight.py) goes with the event: in the same Lua
    script as the XADD, or once the event is committed to the database."""
    registry = inflight.current()
    marked = registry is not None and registry.ending(event.request_id)
    if stream_enabled() and redis_breaker().usable():
        args, kwargs = _xadd_args(event)
        try:
            if marked:
                key, fields = args
                [(name, payload)] = fields.items()
                await apipelined("eval", *registry.emit_args(key, name, payload, event.request_id))
            else:
                await apipelined("xadd", *args, **kwargs)
            return
        except REDIS_ERRORS as error:
            _redis_failed(error, event)
    await sync_to_async(releasing_connections(_record))(event)
    if marked:
        registry.forget(event.request_id)
