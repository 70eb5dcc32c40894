"""Usage events, write side: `usage_record`, a batch of events into the table, idempotent, with
the monthly quota's token settlement of exactly the events it stored. metering/usage/__init__.py
explains the pipeline."""

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import date

from django.db import connection, transaction

from accounts.models import Organization
from keys.models import ApiKey
from metering.models import UsageEvent
from metering.quota.counter import settle_rows
from metering.rollups.live import rollup_add_events
from metering.usage.events import UsageEventData

logger = logging.getLogger(__name__)

# Rows per INSERT statement: 18 columns each stays far below SQLite's 32,766 bound variables.
INSERT_BATCH = 500

_COLUMNS = [f for f in UsageEvent._meta.concrete_fields if not f.primary_key]
_INSERT = (
    "INSERT INTO {table} ({columns}) VALUES {rows} ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
)
# PostgreSQL: one array parameter per column, whatever the batch's size (no statement of
# thousands of placeholders for the driver to parse, no per-value adaptation in Python).
_INSERT_ARRAYS = (
    "INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) "
    "ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
)


def _storable(events: Sequence[UsageEventData]) -> dict[str, int | None]:
    """The events that can be stored, as {request_id: the api_key_id to store}: an event of a
    deleted organization is dropped (its usage was deleted with it) and one of a deleted key
    keeps its key_id but no api_key_id, like SET_NULL would."""
    org_ids = {event.organization_id for event in events}
    key_ids = {event.api_key_id for event in events if event.api_key_id is not None}
    live_orgs = set(Organization.objects.filter(pk__in=org_ids).values_list("pk", flat=True))
    live_keys = set()
    if key_ids:
        live_keys = set(ApiKey.objects.filter(pk__in=key_ids).values_list("pk", flat=True))
    storable: dict[str, int | None] = {}
    for event in events:
        if event.organization_id not in live_orgs:
            logger.warning(
                "usage event %s dropped: organization %s no longer exists",
                event.request_id,
                event.organization_id,
            )
            continue
        storable[event.request_id] = event.api_key_id if event.api_key_id in live_keys else None
    return storable


def _value(event: UsageEventData, attname: str, api_key_ids: dict[str, int | None]):
    if attname == "api_key_id":
        return api_key_ids[event.request_id]
    return getattr(event, attname)


def _insert_new(events: list[UsageEventData], api_key_ids: dict[str, int | None]) -> set[str]:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING request_id: the request ids of
    the rows this statement inserted, not of those already stored (by an earlier run, or a
    concurrent drainer, whose commit this statement waits for). PostgreSQL and SQLite >= 3.35.
    The events are sanitized already (UsageEventData): every value fits its column."""
    quote = connection.ops.quote_name
    names = {
        "table": quote(UsageEvent._meta.db_table),
        "columns": ", ".join(quote(f.column) for f in _COLUMNS),
        "key": quote("request_id"),
    }
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in _COLUMNS)
            params = [[_value(e, f.attname, api_key_ids) for e in events] for f in _COLUMNS]
            cursor.execute(_INSERT_ARRAYS.format(arrays=arrays, **names), params)
            return {request_id for (request_id,) in cursor.fetchall()}
        inserted: set[str] = set()
        placeholders = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
        for start in range(0, len(events), INSERT_BATCH):
            batch = events[start : start + INSERT_BATCH]
            params = [
                f.get_db_prep_save(_value(event, f.attname, api_key_ids), connection)
                for event in batch
                for f in _COLUMNS
            ]
            rows = ", ".join([placeholders] * len(batch))
            cursor.execute(_INSERT.format(rows=rows, **names), params)
            inserted.update(request_id for (request_id,) in cursor.fetchall())
        return inserted


def _settle_quota(events: Sequence[UsageEventData], inserted: set[str]) -> None:
    """Each newly stored event's quota tokens from the admission's estimate to what it used,
    summed per organization, month and counter generation (nothing once the counter was reset
    since: metering/quota/lease.py, "Resets"). Rows are updated in one order (no deadlock
    between concurrent drainers), last in the transaction (the row locks are held briefly)."""
    deltas: dict[tuple[int, date, int], int] = defaultdict(int)
    for event in events:
        if event.quota_period is not None and event.request_id in inserted:
            used = event.input_tokens + event.output_tokens
            deltas[(event.organization_id, event.quota_period, event.quota_generation)] += (
                used - event.quota_tokens
            )
    for (organization_id, period, generation), delta in sorted(deltas.items()):
        if delta:
            settle_rows(organization_id, period, delta, generation=generation)


def usage_record(*, events: Sequence[UsageEventData]) -> int:
    """Store usage events, add those stored now to the rollups (metering/rollups/) and settle
    their monthly quota tokens, in one transaction. Idempotent: an event whose request_id is
    already stored is skipped, and so are its rollup and settlement, so replaying a batch never
    counts or settles a request twice, and an event that reaches the table has settled.
    Returns how many events were handed to the database (new or already there)."""
    if not events:
        return 0
    first: dict[str, UsageEventData] = {}
    for event in events:
        first.setdefault(event.request_id, event)
    unique = list(first.values())
    with transaction.atomic():
        api_key_ids = _storable(unique)
        if api_key_ids:
            storable = [event for event in unique if event.request_id in api_key_ids]
            inserted = _insert_new(storable, api_key_ids)
            new = [event for event in storable if event.request_id in inserted]
            rollup_add_events(events=new, api_key_ids=api_key_ids)
            _settle_quota(unique, inserted)
    return len(api_key_ids)
