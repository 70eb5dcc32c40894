"""Usage reads. Every query is scoped by organization and aggregated in SQL."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, DecimalField, Max, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Organization
from aibaas.errors import ApplicationError
from metering.models import UsageEvent

INVALID_MONTH = "invalid_request_error"
INVALID_MONTH_MESSAGE = "'month' must be a calendar month written YYYY-MM, e.g. 2025-06."
COST_QUANTUM = Decimal("0.00000001")

_MONTH = re.compile(r"(\d{4})-(\d{2})", re.ASCII)
_COST = DecimalField(max_digits=28, decimal_places=8)


def month_period(month: str | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in UTC: `month` as YYYY-MM, or the current month."""
    if month is None:
        now = timezone.now().astimezone(UTC)
        year, number = now.year, now.month
    else:
        match = _MONTH.fullmatch(month)
        if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1970:
            raise ApplicationError(INVALID_MONTH, INVALID_MONTH_MESSAGE, status=400, param="month")
        year, number = int(match[1]), int(match[2])
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _totals() -> dict:
    return {
        "requests": Count("id"),
        "input_tokens": Coalesce(Sum("input_tokens"), 0),
        "output_tokens": Coalesce(Sum("output_tokens"), 0),
        "cost": Coalesce(Sum("cost", output_field=_COST), Value(Decimal(0)), output_field=_COST),
    }


def _cost(value: Decimal | None) -> str:
    """Money as a decimal string with 8 places, e.g. "0.00001234"."""
    return f"{Decimal(value or 0).quantize(COST_QUANTUM):f}"


def _t(row: dict) -> dict:
    return {
        "requests": row["requests"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cost": _cost(row["cost"]),
    }


def _events(organization: Organization) -> QuerySet[UsageEvent]:
    return UsageEvent.objects.filter(organization=organization).order_by()


def usage_summary(
    *,
    organization: Organization,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict:
    """The organization's usage in [start, end) (default: this calendar month, UTC), the last
    24 hours, and the period per key and per model: the body of GET /v1/usage. Four queries."""
    if start is None or end is None:
        default_start, default_end = month_period()
        start, end = start or default_start, end or default_end
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
    by_model = period.values("model").annotate(**_totals()).order_by("model")
    return {
        "object": "usage",
        "organization": organization.slug,
        "period": {"start": _iso(start), "end": _iso(end)},
        "totals": _t(totals),
        "last_24h": _t(last_24h),
        "by_key": [{"key_id": row["key_id"], "name": row["name"], **_t(row)} for row in by_key],
        "by_model": [{"model": row["model"], **_t(row)} for row in by_model],
    }
