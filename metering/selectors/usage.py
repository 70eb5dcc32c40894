"""Usage reads: a month of usage events, summed. Every query is scoped by organization and
aggregated in SQL."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, DecimalField, Max, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Organization
from billing.pricing import COST_QUANTUM
from infra.errors import INVALID_REQUEST, ApplicationError
from metering.models import UsageEvent

INVALID_MONTH_MESSAGE = "'month' must be a calendar month written YYYY-MM, e.g. 2025-06."

# A calendar month from 1970-01 on, YYYY-MM: the validator and the OpenAPI schema share it.
MONTH_PATTERN = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$"
MONTH_REGEX = re.compile(MONTH_PATTERN)
_COST = DecimalField(max_digits=28, decimal_places=8)


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


_BILLABLE = Q(billable=True)
_FAILED = Q(billable=True, status_code__gte=400)
_REFUSED = Q(billable=False)


def _totals(*, refusals: bool = True) -> dict:
    """The aggregates of a set of events. "requests" are billable (admitted) requests, as the
    quota and the limits count them; tokens and cost are theirs. `errors`: billable requests
    that failed (upstream errors, timeouts, the client hanging up, interrupted); `refused`:
    requests refused before admission (limits, quota, unknown model, bad body...)."""
    totals = {
        "requests": Count("id", filter=_BILLABLE),
        "input_tokens": Coalesce(Sum("input_tokens", filter=_BILLABLE), 0),
        "output_tokens": Coalesce(Sum("output_tokens", filter=_BILLABLE), 0),
        "cost": Coalesce(
            Sum("cost", filter=_BILLABLE, output_field=_COST),
            Value(Decimal(0)),
            output_field=_COST,
        ),
        "errors": Count("id", filter=_FAILED),
    }
    if refusals:
        totals["refused"] = Count("id", filter=_REFUSED)
    return totals


def _cost(value: Decimal | None) -> str:
    """Money as a decimal string with 8 places, e.g. "0.00001234"."""
    return f"{Decimal(value or 0).quantize(COST_QUANTUM):f}"


def _t(row: dict) -> dict:
    totals = {
        "requests": row["requests"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cost": _cost(row["cost"]),
        "errors": row["errors"],
    }
    if "refused" in row:
        totals["refused"] = row["refused"]
    return totals


def _events(organization: Organization) -> QuerySet[UsageEvent]:
    return UsageEvent.objects.filter(organization=organization).order_by()


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
    `totals` of GET /v1/usage, for the dashboard. One query."""
    start, end = _default_period(start, end)
    period = _events(organization).filter(created_at__gte=start, created_at__lt=end)
    return _t(period.aggregate(**_totals()))


def usage_summary(
    *,
    organization: Organization,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict:
    """The organization's usage in [start, end) (default: this calendar month, UTC), the last
    24 hours, and the period per key and per model: the body of GET /v1/usage. Five queries.

    `requests` means billable requests everywhere (per key and per model too), the number the
    quota counts; refusals are `refused` in the totals and per key, and `refused_by_code`. A
    refused request is never a model row: its model may not even exist."""
    start, end = _default_period(start, end)
    period = _events(organization).filter(created_at__gte=start, created_at__lt=end)
    now = timezone.now()
    totals = period.aggregate(**_totals())
    last_24h = (
        _events(organization)
        .filter(created_at__gt=now - timedelta(hours=24), created_at__lte=now)
        .aggregate(**_totals())
    )
    by_key = (
        period.values("key_id")
        # A deleted key's events keep its key_id; its name is gone (null).
        .annotate(name=Max("api_key__name"), **_totals())
        .order_by("key_id")
    )
    by_model = (
        period.filter(_BILLABLE)
        .values("model")
        .annotate(**_totals(refusals=False))
        .order_by("model")
    )
    refused = (
        period.filter(_REFUSED)
        .values("error_code")
        .annotate(count=Count("id"))
        .order_by("error_code")
    )
    return {
        "object": "usage",
        "organization": organization.slug,
        "period": {"start": _iso(start), "end": _iso(end)},
        "totals": _t(totals),
        "last_24h": _t(last_24h),
        "by_key": [{"key_id": row["key_id"], "name": row["name"], **_t(row)} for row in by_key],
        "by_model": [{"model": row["model"], **_t(row)} for row in by_model],
        "refused_by_code": {row["error_code"] or "unknown": row["count"] for row in refused},
    }
