"""What the billing page shows: plan, subscription state, this period's usage and its cost."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from accounts.models import Organization
from billing.models import BillingAccount, Plan
from billing.selectors import grace_deadline, plan_list
from billing.subscriptions import stripe_client
from billing.subscriptions.state import LIVE
from metering.selectors import month_period, usage_totals


@dataclass(frozen=True, slots=True)
class PlanCard:
    plan: Plan
    current: bool
    # One of: "checkout" (subscribe), "portal" (change an existing subscription there),
    # "cancel" (back to free at period end), "resume", "" (nothing to do or not for sale).
    action: str


@dataclass(frozen=True, slots=True)
class BillingOverview:
    online: bool
    plan: Plan
    account: BillingAccount | None
    subscribed: bool
    pending_plan: Plan | None
    grace_until: datetime | None
    period_start: datetime
    period_end: datetime
    usage: dict
    estimate: Decimal | None
    cards: list[PlanCard]


def _card(plan: Plan, current: Plan, account: BillingAccount | None, online: bool) -> PlanCard:
    subscribed = account is not None and account.subscription_status in LIVE
    is_current = plan.pk == current.pk
    action = ""
    if online and not is_current:
        if plan.monthly_price == 0 and subscribed:
            action = "resume" if account.cancel_at_period_end else "cancel"
        elif plan.stripe_price_id:
            action = "portal" if subscribed else "checkout"
    elif online and is_current and subscribed and account.cancel_at_period_end:
        action = "resume"
    return PlanCard(plan=plan, current=is_current, action=action)


def billing_overview(*, organization: Organization) -> BillingOverview:
    online = stripe_client.enabled()
    account = BillingAccount.objects.filter(organization=organization).first()
    plan = organization.plan
    subscribed = account is not None and account.subscription_status in LIVE
    if subscribed and account.current_period_start and account.current_period_end:
        start, end = account.current_period_start, account.current_period_end
    else:
        start, end = month_period()
    usage = usage_totals(organization=organization, start=start, end=min(end, timezone.now()))
    estimate = None
    if plan.monthly_price is not None:
        estimate = plan.monthly_price
        rate = plan.metered_price_per_million_tokens
        if rate and subscribed:
            tokens = usage["input_tokens"] + usage["output_tokens"]
            estimate += (Decimal(tokens) * rate / 1_000_000).quantize(Decimal("0.01"))
    pending = account.checkout_plan if account and account.checkout_plan_id else None
    grace = (
        grace_deadline(account) if account and account.subscription_status == "past_due" else None
    )
    return BillingOverview(
        online=online,
        plan=plan,
        account=account,
        subscribed=subscribed,
        pending_plan=pending,
        grace_until=grace,
        period_start=start,
        period_end=end,
        usage=usage,
        estimate=estimate,
        cards=[_card(p, plan, account, online) for p in plan_list(public_only=True)],
    )
