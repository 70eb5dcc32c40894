"""The hot read of /api/usage, its CSV and the dashboard: an organization's rollup rows summed
per bucket (and key or model) in one GROUP BY, and the published figures of a row of sums.

The statement is written out, not built by the ORM: resolving and compiling ~60 aggregate
expressions cost more than the query itself (docs/benchmarks.md). Its sums are cast to bigint
(PostgreSQL sums bigints as numeric, read back as Decimal), and rows are read as the driver
returns them, the bucket alone converted. Always scoped by organization; every value is a
parameter."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection

from billing.pricing import COST_QUANTUM
from metering.models import HISTOGRAM_BUCKETS, UsageRollup
from metering.rollups.buckets import COUNT_COLUMNS, PERCENTILES, percentiles

# The sums a range reads; refusals are their own rows, so no filter is needed.
SUMS = COUNT_COLUMNS
DIMENSIONS = {"key": "key_id", "model": "model", None: None}

_SELECT = "SELECT {group}, {sums} FROM {table} WHERE {where} GROUP BY {group} ORDER BY {group}"


@dataclass(frozen=True)
class SeriesQuery:
    organization_id: int
    granularity: str
    start: datetime  # the first bucket's start
    end: datetime
    group_by: str | None = None
    key_ids: Sequence[str] = ()
    models: Sequence[str] = ()


def series_rows(query: SeriesQuery) -> list[tuple]:
    """(bucket, [group,] *SUMS) per bucket (and group) with rows, in that order. Grouped by
    model, refused requests are left out: a refusal is never a model's usage (its model may
    not even exist)."""
    quote = connection.ops.quote_name
    bucket = UsageRollup._meta.get_field("bucket")
    where = [f"{quote('organization_id')} = %s", f"{quote('granularity')} = %s"]
    where += [f"{quote('bucket')} >= %s", f"{quote('bucket')} < %s"]
    params: list = [query.organization_id, query.granularity]
    params += [bucket.get_db_prep_value(query.start, connection)]
    params += [bucket.get_db_prep_value(query.end, connection)]
    for column, values in (("key_id", query.key_ids), ("model", query.models)):
        if values:
            where.append(f"{quote(column)} IN ({', '.join(['%s'] * len(values))})")
            params += list(values)
    if query.group_by == "model":
        where.append(f"{quote('refusal_code')} = ''")
    dimension = DIMENSIONS[query.group_by]
    group = ", ".join(quote(c) for c in ("bucket", dimension) if c)
    statement = _SELECT.format(
        group=group,
        sums=", ".join(f"CAST(SUM({quote(name)}) AS BIGINT)" for name in SUMS),
        table=quote(UsageRollup._meta.db_table),
        where=" AND ".join(where),
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        rows = cursor.fetchall()
    col = bucket.get_col(UsageRollup._meta.db_table)
    converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
    if not converters:  # PostgreSQL: already an aware datetime
        return rows
    out = []
    for row in rows:
        value = row[0]
        for converter in converters:
            value = converter(value, col, connection)
        out.append((value, *row[1:]))
    return out


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
