"""What the billing page shows: plan, subscription state, this period's usage and its cost."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from accounts.models import Organization
from billing.models import BillingAccount, Plan
from billing.selectors import grace_deadline, plan_list
from billing.subscriptions import stripe_client
from billing.subscriptions.state import LIVE
from metering.selectors import month_period, usage_totals

CHECKOUT_PENDING_FOR = timedelta(hours=24)


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
    # An open Checkout Session expires after 24 hours at Stripe: nothing is pending after.
    pending = None
    started = account.checkout_started_at if account and account.checkout_plan_id else None
    if started and timezone.now() - started < CHECKOUT_PENDING_FOR:
        pending = account.checkout_plan
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


@dataclass(frozen=True, slots=True)
class StripeDetails:
    card: dict | None
    invoices: list[dict]
    error: str = ""


STRIPE_UNAVAILABLE = (
    "Stripe could not be reached; your card and invoices are in the billing portal."
)


def stripe_details(*, account: BillingAccount | None) -> StripeDetails | None:
    """The card on file and recent invoices, read from Stripe (None without a customer). A
    Stripe failure leaves the rest of the page working."""
    if account is None or not account.stripe_customer_id or not stripe_client.enabled():
        return None
    try:
        card = stripe_client.card_on_file(customer=account.stripe_customer_id)
        invoices = stripe_client.invoices_recent(customer=account.stripe_customer_id)
    except stripe_client.StripeError:
        return StripeDetails(card=None, invoices=[], error=STRIPE_UNAVAILABLE)
    return StripeDetails(
        card=card
        and {
            "brand": card.card.brand,
            "last4": card.card.last4,
            "exp_month": card.card.exp_month,
            "exp_year": card.card.exp_year,
        },
        invoices=[
            {
                "number": invoice.get("number") or invoice["id"],
                "created": datetime.fromtimestamp(invoice["created"], tz=UTC),
                "total": Decimal(invoice.get("total") or 0) / 100,
                "currency": (invoice.get("currency") or "usd").upper(),
                "status": invoice.get("status"),
                "url": invoice.get("hosted_invoice_url"),
            }
            for invoice in (i.to_dict() for i in invoices)
        ],
    )
