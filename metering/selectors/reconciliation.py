"""`usage_reconcile`: do the monthly quota counters and the usage rollups agree with the usage
events? (manage.py reconcile_usage). Reads only.

The rollups must equal the month's events exactly, hourly and daily. A counter must equal the
month's billable events since its last reset, give or take the part of leases out (or lost with
a killed process) that admitted nothing; an organization without a counter row agrees with no
billable events unless its plan has no quota. Every dead-letter entry is a difference too.
The rules in full: docs/usage-events.md ("Reconciliation").
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from accounts.models import AuditAction, AuditEvent, Organization
from infra.redis_clients import BACKGROUND_SOCKET_TIMEOUT, REDIS_ERRORS, redis_client
from metering.models import QuotaCounter, UsageEvent
from metering.rollups.selectors import rollup_differences
from metering.selectors.usage import month_period
from metering.usage.events import ENTRY_FIELD, dead_letter_key, stream_key

logger = logging.getLogger(__name__)

DEAD_LETTERS_LISTED = 1_000


@dataclass
class Difference:
    field: str  # "requests" | "tokens" | "rollup_<hour|day>_<figure>"
    counter: int
    events: int

    @property
    def difference(self) -> int:
        return self.counter - self.events


@dataclass
class OrganizationMonth:
    organization: str
    period: str  # YYYY-MM
    counter: dict | None  # requests, tokens, leased_requests, leased_tokens, generation
    events: dict  # requests, tokens, since
    differences: list[Difference] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["differences"] = [{**asdict(d), "difference": d.difference} for d in self.differences]
        return data


@dataclass
class Reconciliation:
    period: str
    organizations: list[OrganizationMonth]
    dead_letters: dict | None  # {"count", "entries"}; None without Redis
    stream_backlog: int | None

    @property
    def difference_count(self) -> int:
        dead = self.dead_letters["count"] if self.dead_letters else 0
        return sum(len(org.differences) for org in self.organizations) + dead

    def as_dict(self) -> dict:
        return {
            "period": self.period,
            "organizations": [org.as_dict() for org in self.organizations],
            "dead_letters": self.dead_letters,
            "stream_backlog": self.stream_backlog,
            "differences": self.difference_count,
        }


def _resets(period: date, organization_ids: set[int]) -> dict[int, datetime]:
    """The instant of each organization's last quota reset of the month."""
    rows = AuditEvent.objects.filter(
        action=AuditAction.QUOTA_RESET,
        target_id=f"{period:%Y-%m}",
        organization_id__in=organization_ids,
    ).values_list("organization_id", "created_at")
    last: dict[int, datetime] = {}
    for organization_id, at in rows:
        if organization_id not in last or at > last[organization_id]:
            last[organization_id] = at
    return last


def _billable(organization_id: int, start: datetime, end: datetime) -> tuple[int, int]:
    """(requests, tokens) of the organization's billable events in [start, end)."""
    row = UsageEvent.objects.filter(
        organization_id=organization_id, billable=True, created_at__gte=start, created_at__lt=end
    ).aggregate(
        requests=Count("id"),
        tokens=Coalesce(Sum("input_tokens"), 0) + Coalesce(Sum("output_tokens"), 0),
    )
    return row["requests"], row["tokens"]


def _dead_letters(organization: Organization | None) -> tuple[dict, int | None]:
    """The dead-letter stream's entries (of the organization, if given; DEAD_LETTERS_LISTED of
    them listed) and the usage stream's backlog. Redis unreachable: an `error`, counted as one
    difference (nothing can be said of what it holds)."""
    try:
        client = redis_client(socket_timeout=BACKGROUND_SOCKET_TIMEOUT)
        key = stream_key()
        entries, count = [], 0
        cursor = "-"
        while True:
            batch = client.xrange(dead_letter_key(key), min=cursor, count=DEAD_LETTERS_LISTED)
            for entry_id, fields in batch:
                entry = _dead_letter(entry_id, fields)
                if organization is not None and entry["organization_id"] != organization.pk:
                    continue
                count += 1
                if len(entries) < DEAD_LETTERS_LISTED:
                    entries.append(entry)
            if len(batch) < DEAD_LETTERS_LISTED:
                break
            cursor = "(" + batch[-1][0].decode()
        return {"count": count, "entries": entries}, client.xlen(key)
    except REDIS_ERRORS as error:
        logger.warning("reconcile_usage: Redis unreadable: %s", error)
        return {"count": 1, "entries": [], "error": f"Redis unreadable: {error}"}, None


def _dead_letter(entry_id: bytes, fields: dict) -> dict:
    try:
        event = json.loads(fields.get(ENTRY_FIELD.encode(), b""))
        request_id, organization_id = event.get("request_id"), event.get("organization_id")
    except (ValueError, AttributeError):
        request_id = organization_id = None
    return {
        "entry_id": entry_id.decode(),
        "request_id": request_id,
        "organization_id": organization_id,
        "reason": fields.get(b"reason", b"").decode("utf-8", "replace"),
    }


def usage_reconcile(
    *, organization: Organization | None = None, month: str | None = None
) -> Reconciliation:
    """Compare the quota counters of a month (default: this one) with the billable usage events
    (module docstring), for one organization or all."""
    start, end = month_period(month)
    period = start.date()
    scope = Q(organization=organization) if organization is not None else Q()
    counters = {
        counter.organization_id: counter
        for counter in QuotaCounter.objects.filter(period=period).filter(scope)
    }
    organizations = Organization.objects.select_related("plan").order_by("slug")
    if organization is not None:
        organizations = organizations.filter(pk=organization.pk)
    with_events = set(
        UsageEvent.objects.filter(billable=True, created_at__gte=start, created_at__lt=end)
        .filter(scope)
        .order_by()
        .values_list("organization_id", flat=True)
        .distinct()
    )
    organizations = [org for org in organizations if org.pk in counters or org.pk in with_events]
    resets = _resets(period, set(counters))
    results = [
        _organization_month(org, counters.get(org.pk), resets, period, start, end)
        for org in organizations
    ]
    dead, backlog = (None, None)
    if settings.REDIS_URL:
        dead, backlog = _dead_letters(organization)
    return Reconciliation(
        period=f"{period:%Y-%m}",
        organizations=results,
        dead_letters=dead,
        stream_backlog=backlog,
    )


def _organization_month(org, counter, resets, period: date, start, end) -> "OrganizationMonth":
    """One organization's month: its counter against its billable events, and its rollups."""
    since = resets.get(org.pk) if counter is not None and counter.generation else None
    requests, tokens = _billable(org.pk, since or start, end)
    plan = org.plan
    has_quota = plan is not None and any(
        limit is not None for limit in org.quota_limits(plan).values()
    )
    month_result = OrganizationMonth(
        organization=org.slug,
        period=f"{period:%Y-%m}",
        counter=None,
        events={"requests": requests, "tokens": tokens, "since": (since or start).isoformat()},
    )
    # The rollups that every usage figure reads hold exactly the month's events.
    month_result.differences += [
        Difference(name, rollup, events_figure)
        for name, rollup, events_figure in rollup_differences(
            organization_id=org.pk, start=start, end=end
        )
    ]
    if counter is None:
        if has_quota and requests:
            month_result.differences.append(Difference("requests", 0, requests))
        return month_result
    month_result.counter = {
        "requests": counter.requests,
        "tokens": counter.tokens,
        "leased_requests": counter.leased_requests,
        "leased_tokens": counter.leased_tokens,
        "generation": counter.generation,
    }
    for name, events_figure in (("requests", requests), ("tokens", tokens)):
        total = getattr(counter, name)
        leased = getattr(counter, f"leased_{name}")
        # Of a lease out (or lost with its process), the requests it admitted have events
        # and the rest does not: the events lie between the counter without it and with it.
        if not total - leased <= events_figure <= total:
            month_result.differences.append(Difference(name, total - leased, events_figure))
    return month_result
