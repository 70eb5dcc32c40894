"""Fixtures for the metering tests: organizations, keys, usage events, a private usage stream.

Stream tests get their own stream key (USAGE_STREAM_KEY) so that they never see another run's
entries on a shared Redis, and the emit mode they ask for (`stream_mode`: REDIS_URL and a broker
set, as in production).
"""

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis
from asgiref.sync import async_to_sync

from accounts.actors import Actor
from accounts.models import Organization
from infra.breaker import reset_breakers
from keys import touch, verification
from keys.services import IssuedKey, api_key_create
from metering.services import usage_record
from metering.usage import ausage_emit
from metering.usage import events as usage_events
from metering.usage.events import UsageEventData
from tests.factories import MembershipFactory

_request_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """The key layer's per-process caches and last-used writer, the emit circuit breaker."""
    verification.clear_local()
    touch.reset()
    reset_breakers()
    yield
    touch.flush()
    verification.clear_local()
    touch.reset()
    reset_breakers()


@pytest.fixture
def org(db) -> Organization:
    return MembershipFactory().organization


@pytest.fixture
def other_org(db) -> Organization:
    return MembershipFactory().organization


@pytest.fixture
def make_key(db, django_capture_on_commit_callbacks):
    """make_key(organization, name="...", scopes=[...]) -> IssuedKey, verifier primed."""

    def make(organization: Organization, **fields) -> IssuedKey:
        fields.setdefault("name", "test key")
        with django_capture_on_commit_callbacks(execute=True):
            return api_key_create(
                organization=organization, actor=Actor.for_system("tests"), **fields
            )

    return make


def emit(event: UsageEventData) -> None:
    """The production emit (ausage_emit, as the gateway calls it), from sync test code."""
    async_to_sync(ausage_emit)(event)


def make_event(issued: IssuedKey, **fields) -> UsageEventData:
    """A usage event of the key's organization; unique request id unless given."""
    key = issued.api_key
    data = {
        "request_id": f"req_{uuid.uuid4().hex}_{next(_request_numbers)}",
        "organization_id": key.organization_id,
        "api_key_id": key.pk,
        "key_id": key.key_id,
        "model": "demo-chat",
        "endpoint": "chat.completions",
        "status_code": 200,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost": Decimal("0.00001234"),
        "latency_ms": 12,
        "upstream_latency_ms": 9,
        "client_ip": "203.0.113.9",
    }
    data.update(fields)
    if isinstance(data.get("created_at"), str):
        data["created_at"] = datetime.fromisoformat(data["created_at"])
    return UsageEventData(**data)


@pytest.fixture
def issued(make_key, org) -> IssuedKey:
    return make_key(org, name="backend")


@pytest.fixture
def database_mode(settings):
    """The embedded defaults: no Redis, no broker (Celery eager)."""
    settings.REDIS_URL = ""
    settings.CELERY_BROKER_URL = ""
    return settings


@pytest.fixture
def stream_mode(settings):
    """Production's emit path on this run's Redis, with a stream of the test's own."""
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    settings.USAGE_STREAM_KEY = f"aibaas-test:{{usage-{uuid.uuid4().hex}}}:events"
    yield settings
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(
        settings.USAGE_STREAM_KEY, usage_events.dead_letter_key(settings.USAGE_STREAM_KEY)
    )
    client.close()


@pytest.fixture
def stream(stream_mode) -> redis.Redis:
    """A client on the test's stream key's server (decode off: what the drainer sees)."""
    client = redis.Redis.from_url(stream_mode.REDIS_URL)
    yield client
    client.close()


# --- a month of usage across two organizations, two keys, two models --------------------------

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


@dataclass
class Dataset:
    org: Organization
    other_org: Organization
    alpha: IssuedKey  # org's key "alpha", scopes usage:read
    beta: IssuedKey  # org's key "beta", scope inference
    other: IssuedKey  # other_org's key, scopes usage:read


@pytest.fixture
def usage_dataset(org, other_org, make_key, time_machine) -> Dataset:
    """Events around June 2025, "now" frozen at 2025-06-15 12:00 UTC.

    June (org):  alpha demo-chat  06-01 00:00:00  100/200  0.00010000  (first instant of June)
                 alpha demo-embed 06-15 11:00      7/0    0.00000007  (last 24 h)
                 beta  demo-chat  06-14 13:00     30/40   0.00001234  (last 24 h)
                 beta  demo-chat  06-14 12:00      1/1    0.00000001  (24 h ago exactly: out)
    May (org):   alpha demo-chat  05-31 23:59:59.999999  1000/1000  1.00000000
    July (org):  beta  demo-chat  07-01 00:00:00    50/50   0.5  (first instant of July: out)
    other_org:   June 10, demo-chat, 5000/5000, 9.00000000: never in org's numbers.
    """
    time_machine.move_to(NOW, tick=False)
    alpha = make_key(org, name="alpha", scopes=["usage:read"])
    beta = make_key(org, name="beta", scopes=["inference"])
    other = make_key(other_org, name="other", scopes=["usage:read"])
    rows = [
        (alpha, "demo-chat", "2025-06-01T00:00:00+00:00", 100, 200, "0.0001"),
        (alpha, "demo-embed", "2025-06-15T11:00:00+00:00", 7, 0, "0.00000007"),
        (beta, "demo-chat", "2025-06-14T13:00:00+00:00", 30, 40, "0.00001234"),
        (beta, "demo-chat", "2025-06-14T12:00:00+00:00", 1, 1, "0.00000001"),
        (alpha, "demo-chat", "2025-05-31T23:59:59.999999+00:00", 1000, 1000, "1"),
        (beta, "demo-chat", "2025-07-01T00:00:00+00:00", 50, 50, "0.5"),
        (other, "demo-chat", "2025-06-10T00:00:00+00:00", 5000, 5000, "9"),
    ]
    usage_record(
        events=[
            make_event(
                key,
                model=model,
                endpoint="embeddings" if model == "demo-embed" else "chat.completions",
                created_at=at,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost=Decimal(cost),
            )
            for key, model, at, tokens_in, tokens_out, cost in rows
        ]
    )
    return Dataset(org=org, other_org=other_org, alpha=alpha, beta=beta, other=other)


def expected_june(data: Dataset) -> dict:
    """usage_summary of data.org for June 2025, worked out by hand."""
    by_key = [
        {
            "key_id": data.alpha.api_key.key_id,
            "name": "alpha",
            "requests": 2,
            "input_tokens": 107,
            "output_tokens": 200,
            "cost": "0.00010007",
            "errors": 0,
            "refused": 0,
        },
        {
            "key_id": data.beta.api_key.key_id,
            "name": "beta",
            "requests": 2,
            "input_tokens": 31,
            "output_tokens": 41,
            "cost": "0.00001235",
            "errors": 0,
            "refused": 0,
        },
    ]
    return {
        "object": "usage",
        "organization": data.org.slug,
        "period": {"start": "2025-06-01T00:00:00Z", "end": "2025-07-01T00:00:00Z"},
        "totals": {
            "requests": 4,
            "input_tokens": 138,
            "output_tokens": 241,
            "cost": "0.00011242",
            "errors": 0,
            "refused": 0,
        },
        "last_24h": {
            "requests": 2,
            "input_tokens": 37,
            "output_tokens": 40,
            "cost": "0.00001241",
            "errors": 0,
            "refused": 0,
        },
        "by_key": sorted(by_key, key=lambda row: row["key_id"]),
        "by_model": [
            {
                "model": "demo-chat",
                "requests": 3,
                "input_tokens": 131,
                "output_tokens": 241,
                "cost": "0.00011235",
                "errors": 0,
            },
            {
                "model": "demo-embed",
                "requests": 1,
                "input_tokens": 7,
                "output_tokens": 0,
                "cost": "0.00000007",
                "errors": 0,
            },
        ],
        "refused_by_code": {},
    }
