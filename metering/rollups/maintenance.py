"""Usage rollups, write side. `rollup_add_rows` adds hourly sums (and their days) to the stored
rows: the drain's, summed in memory from the events its transaction inserted
(metering/rollups/live.py, which mirrors `_AGGREGATES`). `rollup_rebuild` recomputes them from
the events (manage.py rebuild_rollups) set-based, one INSERT ... SELECT ... GROUP BY per
granularity. Both add through one ON CONFLICT clause, so a rebuild writes the rows the drain
wrote (tests/metering/test_rollups_live.py)."""

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

from django.db import connection, transaction
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    ExpressionWrapper,
    F,
    Max,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Round, TruncDay, TruncHour

from accounts.models import Organization
from metering.models import LATENCY_BOUNDS_MS, UsageEvent, UsageRollup
from metering.rollups.buckets import COUNT_COLUMNS, floor, latency_columns

# Rows per upsert statement (about 60 columns each).
UPSERT_BATCH = 200

_DIMENSIONS = ("organization_id", "granularity", "bucket", "key_id", "model", "refusal_code")
_BILLABLE = Q(billable=True)
_COUNTS = COUNT_COLUMNS


def _histogram(field: str, prefix: str) -> dict:
    """One Count per bucket: bucket i holds (bound[i-1], bound[i]] ms, the last one the rest."""
    columns = {}
    lower = None
    for index, name in enumerate(latency_columns(prefix)):
        condition = _BILLABLE & Q(**{f"{field}__isnull": False})
        if lower is not None:
            condition &= Q(**{f"{field}__gt": lower})
        if index < len(LATENCY_BOUNDS_MS):
            condition &= Q(**{f"{field}__lte": LATENCY_BOUNDS_MS[index]})
            lower = LATENCY_BOUNDS_MS[index]
        columns[name] = Count("id", filter=condition)
    return columns


def _sum(field: str, condition: Q = _BILLABLE):
    return Coalesce(Sum(field, filter=condition), 0)


COST_UNITS = ExpressionWrapper(
    Cast(Round(F("cost") * Value(100_000_000)), BigIntegerField()), output_field=BigIntegerField()
)
_AGGREGATES = {
    "requests": Count("id", filter=_BILLABLE),
    "refused": Count("id", filter=~_BILLABLE),
    "input_tokens": _sum("input_tokens"),
    "output_tokens": _sum("output_tokens"),
    "cached_requests": Count("id", filter=_BILLABLE & Q(cached=True)),
    "cached_tokens": _sum("input_tokens", _BILLABLE & Q(cached=True)),
    "cost_units": Coalesce(Sum(COST_UNITS, filter=_BILLABLE), 0),
    "errors_4xx": Count("id", filter=_BILLABLE & Q(status_code__gte=400, status_code__lt=500)),
    "errors_5xx": Count("id", filter=_BILLABLE & Q(status_code__gte=500)),
    "latency_ms_sum": _sum("latency_ms"),
    "ttft_count": Count("id", filter=_BILLABLE & Q(upstream_latency_ms__isnull=False)),
    **_histogram("latency_ms", "latency"),
    **_histogram("upstream_latency_ms", "ttft"),
    "api_key_id": Max("api_key_id"),
}
_REFUSAL_CODE = Case(
    When(billable=True, then=Value("")),
    When(error_code="", then=Value("unknown")),
    default=F("error_code"),
    output_field=CharField(),
)

_UPSERT = "INSERT INTO {table} ({columns}) VALUES {rows} {conflict}"
# SQLite needs the WHERE: without it, ON CONFLICT would parse as a join's ON.
_INSERT_SELECT = (
    "INSERT INTO {table} ({columns}) SELECT {values} FROM ({sums}) AS sums WHERE 1 = 1 {conflict}"
)
_COLUMNS = (*_DIMENSIONS, "api_key_id", *_COUNTS)

Key = tuple  # the _DIMENSIONS of one rollup row


_TRUNC = {UsageRollup.HOUR: TruncHour, UsageRollup.DAY: TruncDay}


def _aggregated(events: QuerySet[UsageEvent], granularity: str) -> QuerySet:
    """The events summed per organization x UTC hour (or day) `at` x key x model x refusal
    `code`, each sum as `s_<column>`: one rollup row's values per group."""
    return (
        events.order_by()
        .annotate(at=_TRUNC[granularity]("created_at", tzinfo=UTC), code=_REFUSAL_CODE)
        .values("organization_id", "at", "key_id", "model", "code")
        .annotate(**{f"s_{name}": value for name, value in _AGGREGATES.items()})
    )


class _Sums:
    """Rollup rows being summed: hourly rows from the aggregation, and the daily ones from them."""

    def __init__(self) -> None:
        self.rows: dict[Key, dict] = defaultdict(lambda: dict.fromkeys(_COUNTS, 0))
        self.keys: dict[Key, int | None] = {}

    def add(self, row: dict) -> None:
        hour = row["at"]
        for granularity, bucket in (
            (UsageRollup.HOUR, hour),
            (UsageRollup.DAY, floor(hour, UsageRollup.DAY)),
        ):
            key = (row["organization_id"], granularity, bucket, row["key_id"], row["model"])
            key += (row["code"],)
            sums = self.rows[key]
            for name in _COUNTS:
                sums[name] += row[f"s_{name}"] or 0
            if row["s_api_key_id"] is not None:
                self.keys[key] = row["s_api_key_id"]

    def upsert(self) -> int:
        """Add the sums to the stored rows (insert the missing ones), in the rows' unique order
        so that concurrent drainers never deadlock. Returns the number of rows written."""
        items = sorted(self.rows.items())
        for start in range(0, len(items), UPSERT_BATCH):
            _upsert(items[start : start + UPSERT_BATCH], self.keys)
        return len(items)


def _upsert(items: list[tuple[Key, dict]], keys: dict[Key, int | None]) -> None:
    quote = connection.ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    bucket_field = UsageRollup._meta.get_field("bucket")
    columns = _COLUMNS
    params: list = []
    for key, sums in items:
        organization_id, granularity, bucket, key_id, model, code = key
        bucket_value = bucket_field.get_db_prep_save(bucket, connection)
        params += [organization_id, granularity, bucket_value, key_id, model, code]
        params += [keys.get(key)] + [sums[name] for name in _COUNTS]
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    # Identifiers are the model's own, quoted; every value is a parameter.
    statement = _UPSERT.format(
        table=table,
        columns=", ".join(quote(c) for c in columns),
        rows=", ".join([row] * len(items)),
        conflict=_conflict(table),
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def _conflict(table: str) -> str:
    """Add to the stored row: the sums add up, the key's id is kept once the key is deleted."""
    quote = connection.ops.quote_name
    updates = [f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in _COUNTS]
    updates.append(f"api_key_id = COALESCE(excluded.api_key_id, {table}.api_key_id)")
    key = ", ".join(quote(c) for c in _DIMENSIONS)
    return f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"


def _insert_select(events: QuerySet[UsageEvent], granularity: str) -> int:
    """Sum `events` into the rollup rows of `granularity` in the database, in one statement
    (the same aggregation and conflict clause as the drain's). Returns the rows written."""
    quote = connection.ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    sums_sql, sums_params = _aggregated(events, granularity).query.sql_with_params()
    sources = ("organization_id", "at", "key_id", "model", "code", "s_api_key_id")
    values = [quote(sources[0]), "%s", *(quote(name) for name in sources[1:])]
    values += [quote(f"s_{name}") for name in _COUNTS]
    statement = _INSERT_SELECT.format(
        table=table,
        columns=", ".join(quote(c) for c in _COLUMNS),
        values=", ".join(values),
        sums=sums_sql,
        conflict=_conflict(table),
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [granularity, *sums_params])
        return cursor.rowcount


def rollup_add_rows(rows: Iterable[dict]) -> int:
    """Add hourly sums shaped as `_aggregated` yields them (and their days) to the stored rows.
    Returns the rollup rows written."""
    sums = _Sums()
    for row in rows:
        sums.add(row)
    return sums.upsert()


def rollup_rebuild(
    *, organization: Organization | None = None, since: datetime | None = None
) -> int:
    """Recompute the rollups from the usage events: of one organization or all, from the UTC day
    that holds `since` or from the start; one transaction per organization. Safe beside a
    running drain: on PostgreSQL the table is locked (EXCLUSIVE: reads go on, writers wait for
    that organization's rebuild) before its events are read, so a drain's events are either
    read here or added after; SQLite has one writer. Returns the rollup rows written."""
    day = floor(since, UsageRollup.DAY) if since is not None else None
    scopes = [organization.pk] if organization is not None else None
    if scopes is None:
        with_events = UsageEvent.objects.order_by().values_list("organization_id", flat=True)
        with_rollups = UsageRollup.objects.order_by().values_list("organization_id", flat=True)
        scopes = sorted(set(with_events.distinct()) | set(with_rollups.distinct()))
    return sum(_rebuild_one(organization_id, day) for organization_id in scopes)


@transaction.atomic
def _rebuild_one(organization_id: int, day: datetime | None) -> int:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(UsageRollup._meta.db_table)
            cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    rollups = UsageRollup.objects.filter(organization_id=organization_id)
    events = UsageEvent.objects.filter(organization_id=organization_id)
    if day is not None:
        rollups = rollups.filter(bucket__gte=day)
        events = events.filter(created_at__gte=day)
    rollups.delete()
    return sum(_insert_select(events, granularity) for granularity in _TRUNC)
