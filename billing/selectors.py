from django.db.models import QuerySet

from billing.models import Plan
from infra.errors import ApplicationError

PLAN_NOT_FOUND = "plan_not_found"


def plan_list(*, public_only: bool = False) -> QuerySet[Plan]:
    plans = Plan.objects.all()
    return plans.filter(is_public=True) if public_only else plans


def plan_get(*, slug: str) -> Plan:
    try:
        return Plan.objects.get(slug=slug)
    except Plan.DoesNotExist:
        known = ", ".join(Plan.objects.values_list("slug", flat=True))
        raise ApplicationError(
            PLAN_NOT_FOUND, f"No plan with slug {slug!r}. Known plans: {known}.", status=404
        ) from None
