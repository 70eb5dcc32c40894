"""Usage rollups: maintained with the events exactly once, rebuilt from them identically, read
back as /v1/usage's numbers, series and latency percentiles."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.forms.models import model_to_dict

from metering.models import UsageEvent, UsageRollup
from metering.rollups.buckets import percentiles
from metering.rollups.maintenance import rollup_rebuild
from metering.rollups.selectors import usage_series
from metering.selectors import usage_summary
from metering.services import usage_record
from tests.metering.conftest import expected_june, make_event

pytestmark = pytest.mark.django_db
JUNE = datetime(2025, 6, 1, tzinfo=UTC)


def _rows() -> list[dict]:
    return sorted(
        (
            {k: v for k, v in model_to_dict(row).items() if k != "id"}
            for row in UsageRollup.objects.all()
        ),
        key=lambda row: (row["organization"], row["granularity"], row["bucket"], row["key_id"],
                         row["model"], row["refusal_code"]),
    )  # fmt: skip


def test_a_redrained_batch_is_counted_once(issued):
    events = [make_event(issued, created_at="2025-06-01T10:15:00+00:00") for _ in range(3)]
    usage_record(events=events)
    usage_record(events=events)
    usage_record(events=[*events, make_event(issued, created_at="2025-06-01T10:59:00+00:00")])
    hour = UsageRollup.objects.get(granularity="hour")
    day = UsageRollup.objects.get(granularity="day")
    assert (hour.bucket, day.bucket) == (
        datetime(2025, 6, 1, 10, tzinfo=UTC),
        datetime(2025, 6, 1, tzinfo=UTC),
    )
    for row in (hour, day):
        assert (row.requests, row.input_tokens, row.output_tokens) == (4, 40, 80)
        assert row.cost_units == 4 * 1234


def test_refusals_errors_and_cache_hits_land_in_their_columns(issued):
    at = "2025-06-02T08:00:00+00:00"
    usage_record(
        events=[
            make_event(issued, created_at=at, billable=False, status_code=429,
                       error_code="rate_limit_exceeded", input_tokens=0, output_tokens=0),
            make_event(issued, created_at=at, billable=False, status_code=429,
                       error_code="rate_limit_exceeded", input_tokens=0, output_tokens=0),
            make_event(issued, created_at=at, billable=False, status_code=400, error_code=""),
            make_event(issued, created_at=at, status_code=502, error_code="upstream_error"),
            make_event(issued, created_at=at, status_code=499, error_code="client_closed"),
            make_event(issued, created_at=at, cached=True, input_tokens=33),
        ]
    )  # fmt: skip
    hour = UsageRollup.objects.filter(granularity="hour")
    refused = dict(hour.exclude(refusal_code="").values_list("refusal_code", "refused"))
    assert refused == {"rate_limit_exceeded": 2, "unknown": 1}
    billable = hour.get(refusal_code="")
    assert (billable.requests, billable.errors_4xx, billable.errors_5xx) == (3, 1, 1)
    assert (billable.cached_requests, billable.cached_tokens) == (1, 33)
    assert billable.input_tokens == 10 + 10 + 33


def test_latency_histograms_read_back_as_percentiles(issued):
    latencies = list(range(1, 101))  # 1..100 ms
    usage_record(
        events=[
            make_event(issued, created_at="2025-06-03T00:00:00+00:00", latency_ms=ms,
                       upstream_latency_ms=None if ms % 2 else ms)
            for ms in latencies
        ]
    )  # fmt: skip
    series = usage_series(
        organization=issued.api_key.organization,
        start=datetime(2025, 6, 3, tzinfo=UTC),
        end=datetime(2025, 6, 4, tzinfo=UTC),
        granularity="day",
    )
    totals = series["totals"]
    # Buckets (50, 75] and (75, 100] hold 25 each: p50 = 50, p95 = 95, p99 = 99, exactly here.
    assert (totals["latency_p50_ms"], totals["latency_p95_ms"], totals["latency_p99_ms"]) == (
        50,
        95,
        99,
    )
    assert totals["latency_mean_ms"] == round(sum(latencies) / 100)
    assert totals["ttft_p50_ms"] == 50


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([0] * 23, 50, None),
        ([10] + [0] * 22, 50, 2),  # (0, 5]: 2.5 rounds to 2
        ([0] * 22 + [4], 99, 60000),  # the open last bucket reads as its lower bound
        ([1, 1] + [0] * 21, 100, 10),
    ],
)
def test_percentile(counts, q, expected):
    assert percentiles(counts, (q,)) == [expected]


def test_rebuild_gives_the_rows_the_drain_wrote(usage_dataset):
    usage_record(
        events=[
            make_event(usage_dataset.alpha, created_at="2025-06-14T09:30:00+00:00",
                       billable=False, status_code=429, error_code="insufficient_quota"),
            make_event(usage_dataset.beta, created_at="2025-06-14T09:31:00+00:00",
                       status_code=504, latency_ms=30001, upstream_latency_ms=None),
        ]
    )  # fmt: skip
    maintained = _rows()
    assert maintained
    UsageRollup.objects.all().delete()
    written = rollup_rebuild()
    assert written == len(maintained)
    assert _rows() == maintained


def _mixed_events(keys) -> list:
    """Events of every kind: keys of two organizations, three models, eight hours across a
    midnight, refusals (with and without a code), upstream errors, cache hits, latencies in
    every histogram bucket and past the last, no time to first token, costs to the 1e-8."""
    rng = random.Random(13)  # a fixed, repeatable data set
    midnight = datetime(2025, 6, 2, tzinfo=UTC)
    events = []
    for _ in range(400):
        fields = {
            "model": rng.choice(["demo-chat", "demo-embed", "retired-model"]),
            "created_at": midnight + timedelta(seconds=rng.randrange(-4 * 3600, 4 * 3600)),
            "status_code": rng.choice([200, 200, 200, 400, 499, 502, 504]),
            "input_tokens": rng.randrange(0, 5000),
            "output_tokens": rng.randrange(0, 5000),
            "cost": Decimal(rng.randrange(0, 10**9)).scaleb(-8),
            "cached": rng.random() < 0.1,
            "latency_ms": rng.choice([0, 1, 5, 6, 99, 100, 1000, 59999, 60000, 60001, 250000]),
            "upstream_latency_ms": rng.choice([None, 0, 3, 700, 70000]),
        }
        if rng.random() < 0.15:
            fields.update(
                billable=False,
                status_code=rng.choice([400, 404, 429]),
                error_code=rng.choice(["rate_limit_exceeded", "model_not_found", ""]),
                input_tokens=0,
                output_tokens=0,
                cost=Decimal(0),
                upstream_latency_ms=None,
            )
        events.append(make_event(rng.choice(keys), **fields))
    return events


def test_rebuild_equals_the_drain_row_for_row_on_a_mixed_data_set(org, other_org, make_key):
    keys = [make_key(org, name="alpha"), make_key(org, name="beta"), make_key(other_org)]
    events = _mixed_events(keys)
    for start in range(0, len(events), 70):  # overlapping batches: every other one replays
        usage_record(events=events[start : start + 90])
    drained = _rows()
    assert {row["granularity"] for row in drained} == {"hour", "day"}
    assert {row["refusal_code"] for row in drained} >= {"", "unknown", "rate_limit_exceeded"}

    UsageRollup.objects.all().delete()
    assert rollup_rebuild() == len(drained)
    assert _rows() == drained
    # One organization from a day on (its earlier rows and the other's untouched), then all.
    assert rollup_rebuild(organization=org, since=datetime(2025, 6, 2, 3, tzinfo=UTC)) > 0
    assert _rows() == drained
    assert rollup_rebuild() == len(drained)
    assert _rows() == drained


def test_rebuild_of_one_organization_since_a_day_leaves_the_rest(usage_dataset):
    before = _rows()
    UsageRollup.objects.filter(organization=usage_dataset.org).update(requests=999)
    UsageRollup.objects.filter(organization=usage_dataset.other_org).update(requests=777)
    call_command("rebuild_rollups", "--org", usage_dataset.org.slug, "--since", "2025-06-01")
    org_rows = UsageRollup.objects.filter(organization=usage_dataset.org)
    # May stays as it was (999), June on is recomputed, the other organization untouched.
    assert set(org_rows.filter(bucket__lt=JUNE).values_list("requests", flat=True)) == {999}
    assert 999 not in set(org_rows.filter(bucket__gte=JUNE).values_list("requests", flat=True))
    assert set(
        UsageRollup.objects.filter(organization=usage_dataset.other_org).values_list(
            "requests", flat=True
        )
    ) == {777}
    call_command("rebuild_rollups")
    assert _rows() == before


def test_usage_summary_reads_the_rollups_not_the_events(usage_dataset):
    UsageEvent.objects.filter(organization=usage_dataset.org).update(input_tokens=0)
    assert usage_summary(organization=usage_dataset.org) == expected_june(usage_dataset)
    call_command("rebuild_rollups", "--org", usage_dataset.org.slug)
    assert usage_summary(organization=usage_dataset.org)["totals"]["input_tokens"] == 0


def test_a_range_inside_a_day_reads_hours_and_whole_days_read_days(usage_dataset):
    org = usage_dataset.org
    # 06-14 12:00 .. 06-15 12:00: the hour rows of both edges.
    summary = usage_summary(
        organization=org,
        start=datetime(2025, 6, 14, 12, 30, tzinfo=UTC),
        end=datetime(2025, 6, 15, 11, 30, tzinfo=UTC),
    )
    assert summary["totals"]["requests"] == 3
    # Days 05-31 .. 06-01 whole, plus hours of 06-14.
    summary = usage_summary(
        organization=org,
        start=datetime(2025, 5, 31, tzinfo=UTC),
        end=datetime(2025, 6, 14, 12, 59, tzinfo=UTC),
    )
    assert (summary["totals"]["requests"], summary["totals"]["cost"]) == (3, "1.00010001")


def test_series_by_key_and_model_sum_to_the_totals(usage_dataset):
    org = usage_dataset.org
    start, end = datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC)
    june = expected_june(usage_dataset)
    for group_by in ("key", "model", None):
        series = usage_series(organization=org, start=start, end=end, group_by=group_by)
        assert len(series["buckets"]) == 30
        assert series["totals"]["requests"] == june["totals"]["requests"]
        assert series["totals"]["cost"] == june["totals"]["cost"]
        assert sum(point["requests"] for point in series["data"]) == 4
    by_model = usage_series(organization=org, start=start, end=end, group_by="model")
    assert [(g["group"], g["requests"]) for g in by_model["groups"]] == [
        ("demo-chat", 3),
        ("demo-embed", 1),
    ]
    by_key = usage_series(organization=org, start=start, end=end, group_by="key")
    assert {g["name"] for g in by_key["groups"]} == {"alpha", "beta"}
    only_beta = usage_series(
        organization=org, start=start, end=end, key_ids=[usage_dataset.beta.api_key.key_id]
    )
    assert only_beta["totals"]["requests"] == 2
    hours = usage_series(
        organization=org,
        start=datetime(2025, 6, 14, 12, tzinfo=UTC),
        end=datetime(2025, 6, 15, 12, tzinfo=UTC),
        granularity="hour",
        models=["demo-chat"],
    )
    assert len(hours["buckets"]) == 24
    assert [(p["bucket"], p["requests"]) for p in hours["data"]] == [
        ("2025-06-14T12:00:00Z", 1),
        ("2025-06-14T13:00:00Z", 1),
    ]


def test_another_organizations_rollups_never_show(usage_dataset):
    series = usage_series(
        organization=usage_dataset.other_org,
        start=datetime(2025, 6, 1, tzinfo=UTC),
        end=datetime(2025, 7, 1, tzinfo=UTC),
        group_by="key",
    )
    assert [g["name"] for g in series["groups"]] == ["other"]
    assert series["totals"]["cost"] == "9.00000000"


def test_cost_sums_exactly(issued):
    usage_record(
        events=[
            make_event(issued, created_at="2025-06-05T00:00:00+00:00", cost=Decimal("0.00000001"))
            for _ in range(1000)
        ]
    )
    summary = usage_summary(
        organization=issued.api_key.organization,
        start=datetime(2025, 6, 1, tzinfo=UTC),
        end=datetime(2025, 7, 1, tzinfo=UTC),
    )
    assert summary["totals"]["cost"] == "0.00001000"


def test_reconcile_sees_rollups_that_disagree_with_the_events(usage_dataset):
    from metering.selectors import usage_reconcile

    def rollup_differences():
        result = usage_reconcile(organization=usage_dataset.org, month="2025-06")
        [month] = result.organizations
        return {d.field: (d.counter, d.events) for d in month.differences if "rollup" in d.field}

    assert rollup_differences() == {}
    row = UsageRollup.objects.filter(
        organization=usage_dataset.org, granularity="day", refusal_code="", bucket__gte=JUNE
    ).first()
    row.requests += 1
    row.cost_units += 5
    row.save()
    assert rollup_differences() == {
        "rollup_day_requests": (5, 4),
        "rollup_day_cost_units": (11242 + 5, 11242),
    }
    call_command("rebuild_rollups", "--org", usage_dataset.org.slug, "--since", "2025-06-01")
    assert rollup_differences() == {}
