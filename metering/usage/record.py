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
from metering.rollups.maintenance import rollup_add
from metering.usage.events import UsageEventData

logger = logging.getLogger(__name__)

# Rows per INSERT statement: 21 columns each stays far below SQLite's 32,766 bound variables.
INSERT_BATCH = 500

_COLUMNS = [f for f in UsageEvent._meta.concrete_fields if not f.primary_key]
_INSERT = (
    "INSERT INTO {table} ({columns}) VALUES {rows} ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
)


def _rows(events: Sequence[UsageEventData]) -> list[UsageEvent]:
    """Model rows for the events; an event of a deleted organization is dropped (its usage was
    deleted with it) and one of a deleted key keeps its key_id, like SET_NULL would."""
    org_ids = {event.organization_id for event in events}
    key_ids = {event.api_key_id for event in events if event.api_key_id is not None}
    live_orgs = set(Organization.objects.filter(pk__in=org_ids).values_list("pk", flat=True))
    live_keys = set()
    if key_ids:
        live_keys = set(ApiKey.objects.filter(pk__in=key_ids).values_list("pk", flat=True))
    rows = []
    for event in events:
        if event.organization_id not in live_orgs:
            logger.warning(
                "usage event %s dropped: organization %s no longer exists",
                event.request_id,
                event.organization_id,
            )
            continue
        rows.append(
            UsageEvent(
                request_id=event.request_id,
                organization_id=event.organization_id,
                api_key_id=event.api_key_id if event.api_key_id in live_keys else None,
                key_id=event.key_id,
                model=event.model,
                endpoint=event.endpoint,
                status_code=event.status_code,
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                estimated=event.estimated,
                cached=event.cached,
                cost=event.cost,
                latency_ms=event.latency_ms,
                upstream_latency_ms=event.upstream_latency_ms,
                client_ip=event.client_ip,
                created_at=event.created_at,
                error_code=event.error_code,
                billable=event.billable,
            )
        )
    return rows


def _insert_new(rows: list[UsageEvent]) -> set[str]:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING request_id: the request ids of
    the rows this statement inserted, not of those already stored (by an earlier run, or a
    concurrent drainer, whose commit this statement waits for). PostgreSQL and SQLite >= 3.35."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in _COLUMNS)
    placeholders = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    inserted: set[str] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_BATCH):
            batch = rows[start : start + INSERT_BATCH]
            params = [
                f.get_db_prep_save(getattr(row, f.attname), connection)
                for row in batch
                for f in _COLUMNS
            ]
            statement = _INSERT.format(
                table=quote(UsageEvent._meta.db_table),
                columns=columns,
                rows=", ".join([placeholders] * len(batch)),
                key=quote("request_id"),
            )
            cursor.execute(statement, params)
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
        rows = _rows(unique)
        if rows:
            inserted = _insert_new(rows)
            rollup_add(request_ids=inserted)
            _settle_quota(unique, inserted)
    return len(rows)
