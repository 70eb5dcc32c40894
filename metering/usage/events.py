"""A usage event: what one authenticated /v1 request used and cost (`UsageEventData`), always
storable whatever the client sent, and the names of the Redis stream events travel through.
The pipeline, emit to drain: metering/usage/__init__.py; why each choice: docs/usage-events.md.
"""

import json
import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from infra import jsonfast
from infra.http import canonical_ip
from infra.memo import per_settings
from metering.usage.sanitize import SMALLINT_MAX, clamp_cost, clamp_int, clean_text

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


def _now() -> datetime:
    return datetime.now(UTC)  # timezone.now() with USE_TZ, without reading the setting


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEventData:
    """What one /v1 request used and cost; the fields of metering.UsageEvent, by id.

    Always storable, whatever the client sent (metering/usage/sanitize.py): strings lose NUL and
    lone surrogates and are cut to their columns (request_id ≤ 100, key_id ≤ 32, model ≤ 200,
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
    created_at: datetime = field(default_factory=_now)
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
        return jsonfast.dumps(data).decode()

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
    return isinstance(value, str) and canonical_ip(value) is not None  # remembered: cheap


def legacy_billable(status_code: int, input_tokens: int) -> bool:
    """Whether an event recorded before events said so was admitted: it ran (2xx), failed after
    its admission (499 client gone, 500, 502/504 upstream, 599 interrupted), or used tokens.
    The same rule as migration 0004's backfill."""
    return status_code < 400 or status_code in (499, 500, 502, 504, 599) or input_tokens > 0


_FIELDS = tuple(f.name for f in fields(UsageEventData))


@per_settings
def stream_key() -> str:
    return settings.USAGE_STREAM_KEY


def dead_letter_key(key: str) -> str:
    """`…:events` → `…:dead`: same hash tag, same cluster slot."""
    return key.rsplit(":", 1)[0] + ":dead"


@per_settings
def stream_enabled() -> bool:
    """Events go through the stream only when a Celery worker exists to drain it."""
    return bool(settings.REDIS_URL and settings.CELERY_BROKER_URL)
