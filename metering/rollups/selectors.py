"""Usage rollups, read side: the rows of a time range, summed in SQL. Every read is scoped by
organization and touches rollup rows only, never the events: a month is at most
days x keys x models daily rows, whatever the number of requests."""

from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from django.db import connection
from django.db.models import BigIntegerField, Count, Q, QuerySet, Sum
from django.db.models.functions import Cast, Coalesce

from accounts.models import Organization
from billing.pricing import COST_QUANTUM
from keys.models import ApiKey
from metering.models import HISTOGRAM_BUCKETS, UsageRollup
from metering.rollups.buckets import COUNT_COLUMNS, PERCENTILES, buckets, ceil, floor, percentiles

HOUR, DAY = UsageRollup.HOUR, UsageRollup.DAY
BILLABLE = Q(refusal_code="")
REFUSED = ~BILLABLE

# The sums a range reads; refusals are their own rows, so no filter is needed.
SUMS = COUNT_COLUMNS


def sums(*names: str) -> dict:
    """Aggregates of the columns `names` (default: all), each as `s_<name>` (an annotation may
    not take a field's name). Cast to bigint in SQL: PostgreSQL sums bigints as numeric, which
    the driver would read as Decimal."""
    return {
        f"s_{name}": Cast(Coalesce(Sum(name), 0), BigIntegerField()) for name in (names or SUMS)
    }


def fetch(rows: QuerySet, columns: Sequence[str]) -> list[tuple]:
    """The `columns` of a values() query, as tuples in that order, as the driver returns them:
    without Django's converter call per value (the sums arrive as int), but for `bucket`'s (a
    string on SQLite), once per row. For the reads of many rows x ~60 sums."""
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        found = cursor.fetchall()
    order = [names.index(name) for name in columns]
    if order != list(range(len(names))):
        found = [tuple(row[index] for index in order) for row in found]
    if "bucket" not in columns:
        return found
    at = columns.index("bucket")
    col = UsageRollup._meta.get_field("bucket").get_col(UsageRollup._meta.db_table)
    converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
    if not converters:
        return found
    out = []
    for row in found:
        value = row[at]
        for converter in converters:
            value = converter(value, col, connection)
        out.append((*row[:at], value, *row[at + 1 :]))
    return out


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


def cost(units: int | None) -> Decimal:
    return (Decimal(units or 0) * COST_QUANTUM).quantize(COST_QUANTUM)


# Where the histograms sit in a row of SUMS, and the names of what is read from them.
_LATENCY = slice(SUMS.index("latency_b0"), SUMS.index("latency_b0") + HISTOGRAM_BUCKETS)
_TTFT = slice(SUMS.index("ttft_b0"), SUMS.index("ttft_b0") + HISTOGRAM_BUCKETS)
_LATENCY_SUM = SUMS.index("latency_ms_sum")
_LATENCY_NAMES = [f"latency_p{q}_ms" for q in PERCENTILES]
_TTFT_NAMES = [f"ttft_p{q}_ms" for q in PERCENTILES]


def latency(counts: Sequence[int]) -> dict:
    """p50/p95/p99 of the latency and the time to first token (ms, None when no request) and
    the mean latency, from a row of summed histograms (the SUMS, in order)."""
    histogram = counts[_LATENCY]
    out = dict(zip(_LATENCY_NAMES, percentiles(histogram), strict=True))
    out.update(zip(_TTFT_NAMES, percentiles(counts[_TTFT]), strict=True))
    requests = sum(histogram)
    out["latency_mean_ms"] = round(counts[_LATENCY_SUM] / requests) if requests else None
    return out


def key_names(*, organization: Organization, key_ids: Collection[str]) -> dict[str, str]:
    """key_id → the name of the organization's key (absent once the key is deleted)."""
    keys = ApiKey.objects.filter(organization=organization, key_id__in=key_ids)
    return dict(keys.values_list("key_id", "name"))


GROUPS = ("key", "model")
# The most buckets one series may hold (the API refuses more): 92 days of hours.
MAX_BUCKETS = 2208


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def figures(counts: Sequence[int]) -> dict:
    """The published numbers of a row of sums (the SUMS, in order): counts, cost as a decimal
    string, errors, error rate and the latency percentiles."""
    row = dict(zip(SUMS, counts, strict=True))
    requests = row["requests"]
    errors = row["errors_4xx"] + row["errors_5xx"]
    return {
        "requests": requests,
        "refused": row["refused"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "total_tokens": row["input_tokens"] + row["output_tokens"],
        "cached_tokens": row["cached_tokens"],
        "cost": f"{cost(row['cost_units']):f}",
        "errors": errors,
        "errors_4xx": row["errors_4xx"],
        "errors_5xx": row["errors_5xx"],
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        **latency(counts),
    }


def column_sums(rows: Sequence[Sequence[int]]) -> list[int]:
    """Rows of sums added up, column by column (zeros for no row)."""
    return [sum(column) for column in zip(*rows, strict=True)] if rows else [0] * len(SUMS)


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
    rows = UsageRollup.objects.filter(
        organization=organization, granularity=granularity, bucket__gte=start_bucket, bucket__lt=end
    )
    if key_ids:
        rows = rows.filter(key_id__in=key_ids)
    if models:
        rows = rows.filter(model__in=models)
    rows = rows.order_by()
    dimension = {"key": "key_id", "model": "model", None: None}[group_by]
    # A refused request is never a model's usage: its model may not even exist.
    if group_by == "model":
        rows = rows.filter(BILLABLE)
    fields = ["bucket", dimension] if dimension else ["bucket"]
    columns = [*fields, *(f"s_{name}" for name in SUMS)]
    summed = fetch(rows.values(*fields).annotate(**sums()).order_by(*fields), columns)
    # Each row's figures, and the totals and each group's from its columns added up: linear in
    # the rows, the per-row work in C (zip, sum) but for the percentiles.
    width = len(fields)
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
