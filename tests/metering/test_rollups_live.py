"""The drain sums the events it inserted in Python (metering/rollups/live.py); rebuild_rollups
sums the stored rows in SQL (metering/rollups/maintenance.py). Both must write the same rows,
whatever the events: every latency bound and its neighbours, refusals with and without a code,
cache hits, 4xx/5xx, a deleted key, several hours, days, keys, models and organizations."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.forms.models import model_to_dict

from keys.models import ApiKey
from metering.models import LATENCY_BOUNDS_MS, UsageEvent, UsageRollup
from metering.rollups.maintenance import rollup_rebuild
from metering.services import usage_record
from tests.metering.conftest import make_event

pytestmark = pytest.mark.django_db
START = datetime(2025, 6, 30, 21, 0, tzinfo=UTC)  # crosses a day and a month boundary


def _rows() -> list[tuple]:
    rows = (
        tuple(sorted((k, v) for k, v in model_to_dict(row).items() if k != "id"))
        for row in UsageRollup.objects.all()
    )
    return sorted(rows, key=repr)


def _latencies() -> list[int]:
    values = {0, 1, 61_000, 2**31 - 1}
    for bound in LATENCY_BOUNDS_MS:
        values |= {bound - 1, bound, bound + 1}
    return sorted(values)


def _mixed_events(keys, count: int) -> list:
    rng = random.Random(1234)
    latencies = _latencies()
    events = []
    for number in range(count):
        issued = rng.choice(keys)
        billable = rng.random() > 0.2
        status = rng.choice([200, 200, 200, 400, 404, 429, 499, 500, 502])
        events.append(
            make_event(
                issued,
                created_at=START + timedelta(seconds=rng.randrange(0, 5 * 3600)),
                model=rng.choice(["demo-chat", "demo-embed", "other"]),
                billable=billable,
                status_code=status,
                error_code="" if billable and status == 200 else rng.choice(["", "quota", "x"]),
                cached=rng.random() < 0.1,
                input_tokens=rng.randrange(0, 5000),
                output_tokens=rng.randrange(0, 5000),
                cost=Decimal(rng.randrange(0, 10**9)) / Decimal(10**8),
                latency_ms=latencies[number % len(latencies)],
                upstream_latency_ms=rng.choice([None, *latencies]),
            )
        )
    return events


def test_drain_built_rollups_equal_rebuilt_ones(org, other_org, make_key):
    keys = [make_key(org, name="a"), make_key(org, name="b"), make_key(other_org, name="c")]
    events = _mixed_events(keys, 900)
    gone = make_key(org, name="deleted later")
    events += [make_event(gone, created_at=START, latency_ms=7) for _ in range(3)]
    ApiKey.objects.filter(pk=gone.api_key.pk).delete()
    for start in range(0, len(events), 250):  # several batches, like the drain
        usage_record(events=events[start : start + 250])
    usage_record(events=events[:100])  # a replayed batch adds nothing
    assert UsageEvent.objects.count() == len(events)
    drained = _rows()
    assert sum(dict(row)["requests"] + dict(row)["refused"] for row in drained) == 2 * len(events)
    UsageRollup.objects.all().delete()
    rollup_rebuild()
    assert _rows() == drained
