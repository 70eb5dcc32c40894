"""The monthly quota's reads and operator actions: what an organization used this month, and
the reset (a new generation of the counter: settlements and leases from before no longer move
it; docs/quota-leases.md, "Resets")."""

from datetime import date, datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Organization
from metering.models import QuotaCounter
from metering.quota.decision import period_for, utc


def quota_usage(organization_id: int, now: datetime | None = None) -> tuple[date, int, int]:
    """(period, requests, tokens) of the organization's current month; 0, 0 before its first
    request of the month."""
    period = period_for(utc(now))
    row = (
        QuotaCounter.objects.filter(organization_id=organization_id, period=period)
        .values_list("requests", "tokens")
        .first()
    )
    return (period, *row) if row else (period, 0, 0)


@transaction.atomic
def quota_reset(organization: Organization, *, actor: Actor, reason: str = "") -> None:
    """Zero the organization's counter of the current month (earlier months stay as they are)
    and record a "quota.reset" audit event with the figures it had.

    The reset starts a new generation of the counter: settlements and lease give-backs of
    admissions counted before it no longer move it, and processes stop admitting from leases
    reserved before it within QUOTA_LEASE_MAX_AGE_SECONDS of their reservation's return
    (lease.py)."""
    now = timezone.now()
    period = period_for(now)
    # The row lock makes the figures in the audit event exactly the ones zeroed.
    counter = (
        QuotaCounter.objects.select_for_update()
        .filter(organization=organization, period=period)
        .first()
    )
    requests, tokens = (counter.requests, counter.tokens) if counter else (0, 0)
    generation = counter.generation + 1 if counter else 0
    if counter is not None:
        QuotaCounter.objects.filter(pk=counter.pk).update(
            requests=0,
            tokens=0,
            leased_requests=0,
            leased_tokens=0,
            leased_until=None,
            generation=F("generation") + 1,
            updated_at=now,
        )
    audit_record(
        action=AuditAction.QUOTA_RESET,
        actor=actor,
        organization=organization,
        target_type="quota",
        target_id=f"{period:%Y-%m}",
        metadata={
            "period": period.isoformat(),
            "requests_before": requests,
            "tokens_before": tokens,
            "generation": generation,
            "reason": reason,
        },
    )
