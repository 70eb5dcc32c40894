"""Usage rollups, read side: the rows of a time range, summed in SQL. Every read is scoped by
organization and touches rollup rows only, never the events: a month is at most
days x keys x models daily rows, whatever the number of requests."""

from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, datetime

from django.db.models import BigIntegerField, Count, Q, QuerySet, Sum
from django.db.models.functions import Cast, Coalesce

from accounts.models import Organization
from keys.models import ApiKey
from metering.models import UsageRollup
from metering.rollups.buckets import buckets, ceil, floor
from metering.rollups.series import SUMS, SeriesQuery, column_sums, figures, series_rows

HOUR, DAY = UsageRollup.HOUR, UsageRollup.DAY
BILLABLE = Q(refusal_code="")
REFUSED = ~BILLABLE


def sums(*names: str) -> dict:
    """Aggregates of the columns `names` (default: all), each as `s_<name>` (an annotation may
    not take a field's name). Cast to bigint in SQL: PostgreSQL sums bigints as numeric, which
    the driver would read as Decimal."""
    return {
        f"s_{name}": Cast(Coalesce(Sum(name), 0), BigIntegerField()) for name in (names or SUMS)
    }


def unprefixed(row: dict) -> dict:
    return {name[2:] if name.startswith("s_") else name: value for name, value in row.items()}


def range_filter(start: datetime, end: datetime) -> Q:
    """The rollup rows of [start, end), rounded out to whole hours: daily rows for the whole
    days inside, hourly rows for the hours at either edge. An hour bucket belongs to the range
    when its start is in [floor_hour(start), end)."""
    first, last = floor(start, HOUR), ceil(end, HOUR)
    day_first, day_last = ceil(first, DAY), floor(last, DAY)
    if day_first >= day_last:
        return Q(granularity=HOUR, bucket__gte=first, bucket__lt=last)
    return Q(granularity=DAY, bucket__gte=day_first, bucket__lt=day_last) | Q(
        Q(bucket__gte=first, bucket__lt=day_first) | Q(bucket__gte=day_last, bucket__lt=last),
        granularity=HOUR,
    )


def rollup_rows(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    key_ids: list[str] | None = None,
    models: list[str] | None = None,
) -> QuerySet[UsageRollup]:
    rows = UsageRollup.objects.filter(range_filter(start, end), organization=organization)
    if key_ids:
        rows = rows.filter(key_id__in=key_ids)
    if models:
        rows = rows.filter(model__in=models)
    return rows.order_by()


def key_names(*, organization: Organization, key_ids: Collection[str]) -> dict[str, str]:
    """key_id → the name of the organization's key (absent once the key is deleted)."""
    keys = ApiKey.objects.filter(organization=organization, key_id__in=key_ids).order_by()
    return dict(keys.values_list("key_id", "name"))


GROUPS = ("key", "model")
# The most buckets one series may hold (the API refuses more): 92 days of hours.
MAX_BUCKETS = 2208


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usage_series(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    granularity: str = DAY,
    group_by: str | None = None,
    key_ids: list[str] | None = None,
    models: list[str] | None = None,
) -> dict:
    """The organization's usage over [start, end) per hour or day (UTC buckets: the first is the
    one that holds `start`), optionally per key or per model and filtered by keys and models:
    GET /api/usage, its CSV, the dashboard's charts and tables. One query for the numbers (plus
    one for the key names when grouped by key). `data` holds only the buckets with usage;
    `buckets` lists them all; `totals` and each group's totals sum the same rows."""
    start_bucket = floor(start, granularity)
    starts = buckets(start, end, granularity)
    query = SeriesQuery(
        organization_id=organization.pk,
        granularity=granularity,
        start=start_bucket,
        end=end,
        group_by=group_by,
        key_ids=key_ids or (),
        models=models or (),
    )
    summed = series_rows(query)
    dimension = group_by is not None
    width = 2 if dimension else 1
    # Each row's figures, and the totals and each group's from its columns added up: linear in
    # the rows, the per-row work in C (zip, sum) but for the percentiles.
    counts = [row[width:] for row in summed]
    data, per_group = [], defaultdict(list)
    for row, row_counts in zip(summed, counts, strict=True):
        point = {"bucket": _iso(row[0])}
        if dimension:
            point["group"] = row[1]
            per_group[row[1]].append(row_counts)
        point.update(figures(row_counts))
        data.append(point)
    # A key's name (None once the key is deleted); a model is its own name.
    if group_by == "key":
        names = key_names(organization=organization, key_ids=list(per_group))
    else:
        names = {group: group for group in per_group}
    return {
        "object": "usage.series",
        "organization": organization.slug,
        "start": _iso(start_bucket),
        "end": _iso(end),
        "granularity": granularity,
        "group_by": group_by,
        "buckets": [_iso(bucket) for bucket in starts],
        "groups": [
            {"group": group, "name": names.get(group), **figures(column_sums(rows))}
            for group, rows in sorted(per_group.items())
        ],
        "totals": figures(column_sums(counts)),
        "data": data,
    }


def rollup_models(*, organization: Organization) -> list[str]:
    """The models the organization's billable usage names, for the filters."""
    rows = UsageRollup.objects.filter(organization=organization, granularity=DAY)
    return list(rows.filter(BILLABLE).values_list("model", flat=True).distinct().order_by("model"))


def rollup_differences(
    *, organization_id: int, start: datetime, end: datetime
) -> list[tuple[str, int, int]]:
    """Where the hourly or the daily rollups of [start, end) (whole days) disagree with the
    usage events: [(figure, rollup value, events value)], e.g. ("rollup_day_requests", 4, 5).
    Empty when they agree (reconcile_usage)."""
    from metering.models import UsageEvent
    from metering.rollups.maintenance import COST_UNITS

    billable = Q(billable=True)
    events = UsageEvent.objects.filter(
        organization_id=organization_id, created_at__gte=start, created_at__lt=end
    ).aggregate(
        requests=Count("id", filter=billable),
        refused=Count("id", filter=~billable),
        input_tokens=Coalesce(Sum("input_tokens", filter=billable), 0),
        output_tokens=Coalesce(Sum("output_tokens", filter=billable), 0),
        cost_units=Coalesce(Sum(COST_UNITS, filter=billable), 0),
    )
    out = []
    for granularity in (HOUR, DAY):
        rows = UsageRollup.objects.filter(
            organization_id=organization_id,
            granularity=granularity,
            bucket__gte=start,
            bucket__lt=end,
        ).aggregate(**{name: Coalesce(Sum(name), 0) for name in events})
        out += [
            (f"rollup_{granularity}_{name}", rows[name], events[name])
            for name in events
            if rows[name] != events[name]
        ]
    return out
