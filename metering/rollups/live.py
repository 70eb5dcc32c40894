"""Usage rollups from events in memory: what the drain adds for the events it just inserted,
summed in Python instead of read back from the table. It mirrors maintenance.py's SQL
aggregation (`_AGGREGATES`, `_REFUSAL_CODE`) exactly; tests/metering/test_rollups_live.py
holds the two to the same rows (drain-built rollups == rebuild_rollups' rows)."""

from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC

from metering.models import LATENCY_BOUNDS_MS
from metering.rollups.buckets import COUNT_COLUMNS, latency_columns
from metering.rollups.maintenance import rollup_add_rows

_INDEX = {name: index for index, name in enumerate(COUNT_COLUMNS)}
_LATENCY = [_INDEX[name] for name in latency_columns("latency")]
_TTFT = [_INDEX[name] for name in latency_columns("ttft")]
_COST_UNITS_PER_UNIT = 100_000_000  # cost has 8 decimal places (metering/usage/sanitize.py)


def _bucket(value: int) -> int:
    """The histogram bucket of `value` ms: bucket i holds (bound[i-1], bound[i]]."""
    return bisect_left(LATENCY_BOUNDS_MS, value)


def _refusal_code(event) -> str:
    if event.billable:
        return ""
    return event.error_code or "unknown"


def _count(sums: list[int], event) -> None:
    """Add one event to the counts of its group, as _AGGREGATES counts it."""
    if not event.billable:
        sums[_INDEX["refused"]] += 1
        return
    sums[_INDEX["requests"]] += 1
    sums[_INDEX["input_tokens"]] += event.input_tokens
    sums[_INDEX["output_tokens"]] += event.output_tokens
    if event.cached:
        sums[_INDEX["cached_requests"]] += 1
        sums[_INDEX["cached_tokens"]] += event.input_tokens
    sums[_INDEX["cost_units"]] += int(event.cost * _COST_UNITS_PER_UNIT)
    if 400 <= event.status_code < 500:
        sums[_INDEX["errors_4xx"]] += 1
    elif event.status_code >= 500:
        sums[_INDEX["errors_5xx"]] += 1
    sums[_INDEX["latency_ms_sum"]] += event.latency_ms
    sums[_LATENCY[_bucket(event.latency_ms)]] += 1
    if event.upstream_latency_ms is not None:
        sums[_INDEX["ttft_count"]] += 1
        sums[_TTFT[_bucket(event.upstream_latency_ms)]] += 1


def rollup_add_events(*, events: Iterable, api_key_ids: dict[str, int | None]) -> int:
    """Add `events` (UsageEventData, exactly the ones the caller's transaction inserted) to the
    rollups. `api_key_ids` maps a request id to the api_key_id its row was stored with (None
    for a deleted key). Returns the rollup rows written."""
    groups: dict[tuple, list[int]] = {}
    keys: dict[tuple, int | None] = {}
    for event in events:
        hour = event.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        group = (event.organization_id, hour, event.key_id, event.model, _refusal_code(event))
        sums = groups.get(group)
        if sums is None:
            sums = groups[group] = [0] * len(COUNT_COLUMNS)
        _count(sums, event)
        api_key_id = api_key_ids.get(event.request_id)
        if api_key_id is not None:
            keys[group] = max(api_key_id, keys.get(group) or 0)
    rows = []
    for group, sums in groups.items():
        organization_id, hour, key_id, model, code = group
        row = {"organization_id": organization_id, "at": hour, "key_id": key_id}
        row.update(model=model, code=code, s_api_key_id=keys.get(group))
        row.update({f"s_{name}": sums[index] for name, index in _INDEX.items()})
        rows.append(row)
    return rollup_add_rows(rows)
