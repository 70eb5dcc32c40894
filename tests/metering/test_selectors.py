"""usage_summary: exact sums, organization isolation, month boundaries, the last 24 hours."""

from datetime import UTC, datetime

import pytest

from billing.models import Plan
from infra.errors import INVALID_REQUEST, ApplicationError
from keys import verification
from metering import limiter
from metering.selectors import (
    INVALID_MONTH_MESSAGE,
    key_limit_status,
    month_period,
    usage_summary,
)
from tests.metering.conftest import expected_june

pytestmark = pytest.mark.django_db


def test_summary_of_the_current_month_is_exact(usage_dataset):
    assert usage_summary(organization=usage_dataset.org) == expected_june(usage_dataset)


def test_summary_is_five_queries_whatever_the_number_of_events(
    usage_dataset, django_assert_num_queries
):
    with django_assert_num_queries(5):
        usage_summary(organization=usage_dataset.org)


def test_another_organizations_events_are_never_counted(usage_dataset):
    summary = usage_summary(organization=usage_dataset.other_org)
    assert summary["totals"] == {
        "requests": 1,
        "input_tokens": 5000,
        "output_tokens": 5000,
        "cost": "9.00000000",
        "errors": 0,
        "refused": 0,
    }
    assert [row["key_id"] for row in summary["by_key"]] == [usage_dataset.other.api_key.key_id]
    assert summary["last_24h"]["requests"] == 0


def test_previous_month_holds_only_its_own_last_instant(usage_dataset):
    start, end = month_period("2025-05")
    summary = usage_summary(organization=usage_dataset.org, start=start, end=end)
    assert summary["period"] == {"start": "2025-05-01T00:00:00Z", "end": "2025-06-01T00:00:00Z"}
    assert summary["totals"] == {
        "requests": 1,
        "input_tokens": 1000,
        "output_tokens": 1000,
        "cost": "1.00000000",
        "errors": 0,
        "refused": 0,
    }
    assert [row["name"] for row in summary["by_key"]] == ["alpha"]
    # The last 24 hours do not depend on the period asked for.
    assert summary["last_24h"] == expected_june(usage_dataset)["last_24h"]


def test_next_month_starts_at_its_first_instant(usage_dataset):
    start, end = month_period("2025-07")
    summary = usage_summary(organization=usage_dataset.org, start=start, end=end)
    assert summary["totals"]["requests"] == 1
    assert summary["by_model"] == [
        {
            "model": "demo-chat",
            "requests": 1,
            "input_tokens": 50,
            "output_tokens": 50,
            "cost": "0.50000000",
            "errors": 0,
        }
    ]


def test_last_24h_moves_with_the_clock(usage_dataset, time_machine):
    time_machine.move_to(datetime(2025, 6, 15, 13, 0, 1, tzinfo=UTC), tick=False)
    last_24h = usage_summary(organization=usage_dataset.org)["last_24h"]
    assert last_24h == {
        "requests": 1,
        "input_tokens": 7,
        "output_tokens": 0,
        "cost": "0.00000007",
        "errors": 0,
        "refused": 0,
    }


def test_default_period_follows_the_calendar_month_in_utc(usage_dataset, time_machine):
    time_machine.move_to(datetime(2025, 7, 1, 0, 0, tzinfo=UTC), tick=False)
    summary = usage_summary(organization=usage_dataset.org)
    assert summary["period"] == {"start": "2025-07-01T00:00:00Z", "end": "2025-08-01T00:00:00Z"}
    assert summary["totals"]["requests"] == 1


def test_organization_without_usage_gets_zeros(org):
    summary = usage_summary(organization=org)
    zero = {
        "requests": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": "0.00000000",
        "errors": 0,
        "refused": 0,
    }
    assert (summary["totals"], summary["last_24h"]) == (zero, zero)
    assert (summary["by_key"], summary["by_model"], summary["refused_by_code"]) == ([], [], {})


def test_a_deleted_keys_usage_stays_under_its_key_id(usage_dataset):
    key_id = usage_dataset.beta.api_key.key_id
    usage_dataset.beta.api_key.delete()
    summary = usage_summary(organization=usage_dataset.org)
    assert summary["totals"] == expected_june(usage_dataset)["totals"]
    [row] = [row for row in summary["by_key"] if row["key_id"] == key_id]
    assert (row["name"], row["requests"]) == (None, 2)


@pytest.mark.parametrize(
    ("month", "start", "end"),
    [
        ("2025-01", datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)),
        ("2025-02", datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)),
        ("2024-12", datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_month_period(month, start, end):
    assert month_period(month) == (start, end)


@pytest.mark.parametrize(
    "month",
    [
        "2025-13",
        "2025-00",
        "2025-1",
        "25-01",
        "2025/01",
        "",
        "abcd-ef",
        "2025-01-01",
        " 2025-01",
        "2025-01\n",
        "0000-01",
        "\u0662\u0660\u0662\u0665-\u0660\u0661",
    ],
)
def test_bad_month_is_an_invalid_request_naming_the_param(month):
    with pytest.raises(ApplicationError) as raised:
        month_period(month)
    error = raised.value
    assert (error.code, error.status, error.param) == (INVALID_REQUEST, 400, "month")
    assert error.message == INVALID_MONTH_MESSAGE


# --- key_limit_status: GET /v1/key's limits ---------------------------------------------------


@pytest.mark.parametrize(
    ("burst_percent", "expected"),
    [
        (0, {"requests_per_minute": 60, "tokens_per_minute": 6_000}),
        (
            20,
            {
                "requests_per_minute": 72,
                "tokens_per_minute": 7_200,
                "burst_requests": 6,  # ceil(72 x 5 / 60)
                "burst_tokens": 600,
            },
        ),
    ],
    ids=["no-burst", "burst"],
)
def test_key_limit_status_shows_the_limits_the_limiter_enforces(
    org, make_key, burst_percent, expected
):
    org.plan = Plan.objects.create(
        slug=f"burst-{burst_percent}",
        name="Burst",
        requests_per_minute=60,
        tokens_per_minute=6_000,
        burst_percent=burst_percent,
        burst_seconds=5,
    )
    org.save()
    context = verification.authenticate_key(make_key(org).raw_key)
    limiter.reset(context.key_id)
    status = key_limit_status(context)
    windows = ("requests_per_minute", "tokens_per_minute", "burst_requests", "burst_tokens")
    assert {name: status["limits"][name] for name in windows if name in status["limits"]} == (
        expected
    )
    assert (status["limits"]["burst_percent"], status["limits"]["burst_seconds"]) == (
        burst_percent,
        5,
    )
    # Nothing used: every window remains whole, against the limit shown.
    assert {name: status["remaining"][name] for name in expected} == expected
    assert set(status["remaining"]) == set(status["reset_seconds"])
    assert set(status["remaining"]) >= set(expected)
