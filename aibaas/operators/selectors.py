"""Operators' reads on tenants: every organization (closed ones included), each with its usage
of this month's quota, in one query per page."""

from dataclasses import dataclass
from datetime import date

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Organization
from accounts.selectors import ORGANIZATION_NOT_FOUND
from infra.errors import ApplicationError
from metering.models import QuotaCounter
from metering.quota import period_for


@dataclass(frozen=True, slots=True)
class MonthUsage:
    period: date
    requests: int = 0
    tokens: int = 0


def tenant_list(*, plan: str | None = None) -> QuerySet[Organization]:
    organizations = Organization.objects.select_related("plan").order_by("slug")
    return organizations.filter(plan__slug=plan) if plan else organizations


def tenant_get(*, slug: str) -> Organization:
    organization = Organization.objects.select_related("plan").filter(slug=slug).first()
    if organization is None:
        message = f"No organization with slug {slug!r}."
        raise ApplicationError(ORGANIZATION_NOT_FOUND, message, status=404)
    return organization


def tenant_usage(*, organizations: list[Organization]) -> dict[int, MonthUsage]:
    """{organization id: what its quota counted this calendar month (UTC)}: billable requests
    and their tokens since the month began or since an operator's reset."""
    period = period_for(timezone.now())
    rows = QuotaCounter.objects.filter(
        organization_id__in=[o.pk for o in organizations], period=period
    ).values_list("organization_id", "requests", "tokens")
    usage = {org_id: MonthUsage(period, requests, tokens) for org_id, requests, tokens in rows}
    return {o.pk: usage.get(o.pk, MonthUsage(period)) for o in organizations}
