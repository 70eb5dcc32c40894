"""Time buckets (UTC hours and days) and latency histograms of the usage rollups. Pure."""

from bisect import bisect_left
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import accumulate

from metering.models import HISTOGRAM_BUCKETS, LATENCY_BOUNDS_MS, UsageRollup

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
STEP = {UsageRollup.HOUR: HOUR, UsageRollup.DAY: DAY}
PERCENTILES = (50, 95, 99)


def floor(value: datetime, granularity: str) -> datetime:
    """The start of the UTC hour or day that holds `value`."""
    value = value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if granularity == UsageRollup.DAY else value


def ceil(value: datetime, granularity: str) -> datetime:
    """The first UTC hour or day boundary at or after `value` (datetime.max past the last)."""
    start = floor(value, granularity)
    if start == value:
        return start
    try:
        return start + STEP[granularity]
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def buckets(start: datetime, end: datetime, granularity: str) -> list[datetime]:
    """The bucket starts of [floor(start), end): every bucket that holds part of the range."""
    out, at = [], floor(start, granularity)
    while at < end:
        out.append(at)
        at += STEP[granularity]
    return out


def latency_columns(prefix: str) -> list[str]:
    return [f"{prefix}_b{index}" for index in range(HISTOGRAM_BUCKETS)]


# The summed columns of a rollup row (its dimensions aside).
COUNT_COLUMNS = (
    *("requests", "refused", "input_tokens", "output_tokens", "cached_requests", "cached_tokens"),
    *("cost_units", "errors_4xx", "errors_5xx", "latency_ms_sum", "ttft_count"),
    *latency_columns("latency"),
    *latency_columns("ttft"),
)


def percentiles(counts: Sequence[int], qs: Sequence[float] = PERCENTILES) -> list[int | None]:
    """The qs-th percentiles (0 < q ≤ 100) of a histogram, in ms: linear within the bucket that
    holds each (its error is at most that bucket's width); the open last bucket reads as its
    lower bound. None for an empty histogram. One pass over the buckets, a bisection per q."""
    cumulative = list(accumulate(counts))
    total = cumulative[-1] if cumulative else 0
    if total == 0:
        return [None] * len(qs)
    out: list[int | None] = []
    for q in qs:
        rank = q / 100 * total
        # The first bucket whose running total reaches the rank (it is not empty).
        index = bisect_left(cumulative, rank)
        if index == len(cumulative):
            out.append(LATENCY_BOUNDS_MS[-1])
            continue
        lower = LATENCY_BOUNDS_MS[index - 1] if index else 0
        if index == len(LATENCY_BOUNDS_MS):
            out.append(lower)
            continue
        seen = cumulative[index - 1] if index else 0
        upper = LATENCY_BOUNDS_MS[index]
        out.append(round(lower + (upper - lower) * (rank - seen) / counts[index]))
    return out
