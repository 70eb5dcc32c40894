"""Usage events, write side: `usage_record`, a batch of events into the table, idempotent.
metering/events.py explains the pipeline."""

import logging
from collections.abc import Sequence

from django.db import transaction

from accounts.models import Organization
from keys.models import ApiKey
from metering.events import UsageEventData
from metering.models import UsageEvent

logger = logging.getLogger(__name__)


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
            )
        )
    return rows


def usage_record(*, events: Sequence[UsageEventData]) -> int:
    """Store usage events, atomically. Idempotent: an event whose request_id is already stored is
    skipped, so replaying a batch never counts a request twice. Returns how many events were
    handed to the database (new or already there)."""
    if not events:
        return 0
    with transaction.atomic():
        rows = _rows(events)
        UsageEvent.objects.bulk_create(rows, batch_size=500, ignore_conflicts=True)
    return len(rows)
