"""Usage reads: a month of usage, summed from the rollups (metering/rollups/). Every query is
scoped by organization and aggregated in SQL."""

import re
from datetime import UTC, datetime, timedelta

from django.db.models import Max, Sum
from django.utils import timezone

from accounts.models import Organization
from infra.errors import INVALID_REQUEST, ApplicationError
from metering.models import UsageRollup
from metering.rollups.buckets import HOUR, floor
from metering.rollups.selectors import BILLABLE, REFUSED, rollup_rows, sums, unprefixed
from metering.rollups.series import cost

INVALID_MONTH_MESSAGE = "'month' must be a calendar month written YYYY-MM, e.g. 2025-06."

# A calendar month from 1970-01 on, YYYY-MM: the validator and the OpenAPI schema share it.
MONTH_PATTERN = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$"
MONTH_REGEX = re.compile(MONTH_PATTERN)


def month_period(month: str | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in UTC: `month` as YYYY-MM, or the current month."""
    if month is None:
        now = timezone.now().astimezone(UTC)
        year, number = now.year, now.month
    else:
        match = MONTH_REGEX.fullmatch(month)
        if match is None:
            raise ApplicationError(
                INVALID_REQUEST, INVALID_MONTH_MESSAGE, status=400, param="month"
            )
        year, number = int(match[1]), int(match[2])
    start = datetime(year, number, 1, tzinfo=UTC)
    if (year, number) == (9999, 12):  # the next month is past what datetime holds
        return start, datetime.max.replace(tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _totals(*, refusals: bool = True) -> dict:
    """The sums of a set of rollup rows. "requests" are billable (admitted) requests, as the
    quota and the limits count them; tokens and cost are theirs. `errors`: billable requests
    that failed (upstream errors, timeouts, the client hanging up, interrupted); `refused`:
    requests refused before admission (limits, quota, unknown model, bad body...)."""
    names = ["requests", "input_tokens", "output_tokens", "cost_units", "errors_4xx", "errors_5xx"]
    return sums(*names, *(["refused"] if refusals else []))


def _t(row: dict) -> dict:
    row = unprefixed(row)
    totals = {
        "requests": row["requests"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cost": f"{cost(row['cost_units']):f}",
        "errors": row["errors_4xx"] + row["errors_5xx"],
    }
    if "refused" in row:
        totals["refused"] = row["refused"]
    return totals


def _default_period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    if start is None or end is None:
        default_start, default_end = month_period()
        start, end = start or default_start, end or default_end
    return start, end


def usage_totals(
    *,
    organization: Organization,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict:
    """The organization's totals in [start, end) (default: this calendar month, UTC): the
    `totals` of GET /v1/usage, for the dashboard. One query, on the rollups: the range is read
    in whole hours (metering.rollups.selectors.range_filter)."""
    start, end = _default_period(start, end)
    rows = rollup_rows(organization=organization, start=start, end=end)
    return _t(rows.aggregate(**_totals()))


def usage_summary(
    *,
    organization: Organization,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict:
    """The organization's usage in [start, end) (default: this calendar month, UTC), the last
    24 hours, and the period per key and per model: the body of GET /v1/usage. Five queries on
    the rollups: the period in whole hours, and "the last 24 hours" are the current UTC hour
    and the 23 before it.

    `requests` means billable requests everywhere (per key and per model too), the number the
    quota counts; refusals are `refused` in the totals and per key, and `refused_by_code`. A
    refused request is never a model row: its model may not even exist."""
    start, end = _default_period(start, end)
    period = rollup_rows(organization=organization, start=start, end=end)
    this_hour = floor(timezone.now(), UsageRollup.HOUR)
    last_24h = rollup_rows(
        organization=organization, start=this_hour - timedelta(hours=23), end=this_hour + HOUR
    ).aggregate(**_totals())
    totals = period.aggregate(**_totals())
    by_key = (
        period.values("key_id")
        # A deleted key's usage keeps its key_id; its name is gone (null).
        .annotate(name=Max("api_key__name"), **_totals())
        .order_by("key_id")
    )
    by_model = (
        period.filter(BILLABLE)
        .values("model")
        .annotate(**_totals(refusals=False))
        .order_by("model")
    )
    refused = (
        period.filter(REFUSED)
        .values("refusal_code")
        .annotate(count=Sum("refused"))
        .order_by("refusal_code")
    )
    return {
        "object": "usage",
        "organization": organization.slug,
        "period": {"start": _iso(start), "end": _iso(end)},
        "totals": _t(totals),
        "last_24h": _t(last_24h),
        "by_key": [{"key_id": row["key_id"], "name": row["name"], **_t(row)} for row in by_key],
        "by_model": [{"model": row["model"], **_t(row)} for row in by_model],
        "refused_by_code": {row["refusal_code"]: row["count"] for row in refused},
    }
