from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet

from billing.models import BillingAccount, ModelPrice, Plan
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


def grace_deadline(account: BillingAccount) -> datetime | None:
    """When a past-due subscription's plan stops applying: BILLING_GRACE_DAYS after the first
    failed payment (None if no payment is failing)."""
    if account.past_due_since is None:
        return None
    return account.past_due_since + timedelta(days=settings.BILLING_GRACE_DAYS)


def billing_notice(*, organization_id: int) -> dict | None:
    """What a client should know about the organization's billing (GET /v1/key): a failed
    payment and until when the paid plan is kept. None when there is nothing to say."""
    account = (
        BillingAccount.objects.filter(
            organization_id=organization_id, subscription_status="past_due"
        )
        .select_related("subscribed_plan")
        .first()
    )
    if account is None or account.past_due_since is None:
        return None
    until = grace_deadline(account)
    plan = account.subscribed_plan.slug if account.subscribed_plan else None
    return {
        "status": "past_due",
        "plan": plan,
        "grace_until": until.isoformat().replace("+00:00", "Z"),
        "message": f"A payment failed. The {plan} plan applies until {until:%Y-%m-%d %H:%M} UTC, "
        "then the free plan, unless the payment succeeds.",
    }


def model_catalogue() -> list[str]:
    """The names of the enabled, priced models: what a key's model allow-list is chosen from."""
    prices = ModelPrice.objects.filter(model__enabled=True).order_by("model__name")
    return list(prices.values_list("model__name", flat=True))
