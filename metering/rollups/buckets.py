"""Time buckets (UTC hours and days) and latency histograms of the usage rollups. Pure."""

from datetime import UTC, datetime, timedelta

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


def percentile(counts: list[int], q: float) -> int | None:
    """The q-th percentile (0 < q ≤ 100) of a histogram, in ms: linear within the bucket that
    holds it (its error is at most that bucket's width); the open last bucket reads as its lower
    bound. None for an empty histogram."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q / 100 * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0
            if index == len(LATENCY_BOUNDS_MS):
                return lower
            upper = LATENCY_BOUNDS_MS[index]
            return round(lower + (upper - lower) * (rank - seen) / count)
        seen += count
    return LATENCY_BOUNDS_MS[-1]
