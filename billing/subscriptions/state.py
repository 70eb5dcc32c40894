"""An organization's plan follows its Stripe subscription: `subscription_apply` is the one place
that moves it (webhooks, resync, grace expiry), with an audit event for every transition.

Order-independent: callers pass the subscription as Stripe holds it now (re-read, never the
event's snapshot), and a subscription other than the account's current one only matters when it
is live: a late event about an old, canceled subscription changes nothing.
"""

import logging
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import Organization
from accounts.services import organization_set_plan
from billing.defaults import DEFAULT_PLAN_SLUG
from billing.models import BillingAccount, Plan
from billing.selectors import grace_deadline
from billing.subscriptions import stripe_client

logger = logging.getLogger(__name__)

PLAN_CHANGED = "plan.changed"
STRIPE_ACTOR = Actor.for_system("stripe")
LIVE = ("active", "trialing", "past_due")


def _timestamp(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _licensed_item(subscription):
    items = subscription["items"]["data"]
    for item in items:
        recurring = item["price"].get("recurring") or {}
        if recurring.get("usage_type", "licensed") == "licensed":
            return item
    return items[0] if items else None


def subscription_plan(subscription) -> Plan | None:
    """The plan whose monthly Price the subscription pays (by id, then by the Price's plan)."""
    item = _licensed_item(subscription)
    if item is None:
        return None
    price = item["price"]
    plan = Plan.objects.filter(stripe_price_id=price["id"]).first()
    if plan is None:
        slug = (price.get("metadata") or {}).get("plan")
        plan = Plan.objects.filter(slug=slug).first() if slug else None
    return plan


def effective_plan(account: BillingAccount, *, now: datetime | None = None) -> Plan:
    """What the organization may use given the subscription's state: its plan while active (or
    past due within the grace period), the free plan once it ended or the grace ran out."""
    free = Plan.objects.get(slug=DEFAULT_PLAN_SLUG)
    status = account.subscription_status
    if account.subscribed_plan is None or status not in LIVE:
        return free
    if status == "past_due" and (now or timezone.now()) >= grace_deadline(account):
        return free
    return account.subscribed_plan


def plan_follow(*, account: BillingAccount, reason: str, event_id: str = "") -> bool:
    """Set the organization's plan to `effective_plan`; audit the transition. True if it moved.

    Only organizations Stripe has subscribed ever move: one whose plan an operator set and that
    has no subscription keeps it."""
    if not account.stripe_subscription_id:
        return False
    organization = Organization.objects.select_for_update().get(pk=account.organization_id)
    target = effective_plan(account)
    if organization.plan_id == target.pk:
        return False
    before = organization.plan.slug
    organization_set_plan(organization=organization, plan=target)
    audit_record(
        action=PLAN_CHANGED,
        actor=STRIPE_ACTOR,
        organization=organization,
        target_type="organization",
        target_id=organization.slug,
        target_label=organization.name,
        metadata={
            "from": before,
            "to": target.slug,
            "reason": reason,
            "event_id": event_id,
            "subscription": account.stripe_subscription_id,
            "status": account.subscription_status,
        },
    )
    logger.info("Organization %s: plan %s -> %s (%s)", organization.slug, before, target, reason)
    return True


@transaction.atomic
def subscription_apply(*, account: BillingAccount, subscription, event_id: str = "") -> str:
    """Record Stripe's current state of `subscription` on the account and make the
    organization's plan follow it. Returns what happened, in a few words."""
    account = BillingAccount.objects.select_for_update().get(pk=account.pk)
    status = subscription["status"]
    current = account.stripe_subscription_id
    if current and subscription["id"] != current and status not in LIVE:
        return f"ignored {status} subscription {subscription['id']} (not the current one)"
    item = _licensed_item(subscription)
    plan = subscription_plan(subscription)
    account.stripe_subscription_id = subscription["id"]
    account.subscription_status = status
    account.subscribed_plan = plan or account.subscribed_plan
    account.cancel_at_period_end = bool(subscription.get("cancel_at_period_end"))
    source = item if item is not None and item.get("current_period_end") else subscription
    account.current_period_start = _timestamp(source.get("current_period_start"))
    account.current_period_end = _timestamp(source.get("current_period_end"))
    if status == "past_due":
        account.past_due_since = account.past_due_since or timezone.now()
    else:
        account.past_due_since = None
    if status in LIVE:
        account.checkout_plan = None
        account.checkout_started_at = None
    if event_id:
        account.last_event_id = event_id
        account.last_event_at = timezone.now()
    account.save()
    moved = plan_follow(account=account, reason=f"subscription {status}", event_id=event_id)
    plan_name = plan.slug if plan else "unknown plan"
    return f"subscription {subscription['id']} {status} on {plan_name}" + (
        ", plan changed" if moved else ""
    )


def grace_periods_expire(*, now: datetime | None = None) -> int:
    """Move every organization whose payment has been failing longer than the grace period to
    the free plan (Celery beat, hourly). Returns how many moved; the subscription's recovery
    (invoice.paid) restores the plan."""
    moved = 0
    for account in BillingAccount.objects.filter(
        subscription_status="past_due", past_due_since__isnull=False
    ):
        if (now or timezone.now()) < grace_deadline(account):
            continue
        with transaction.atomic():
            locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
            moved += plan_follow(account=locked, reason="grace period over")
    return moved


def billing_account_resync(*, account: BillingAccount) -> str:
    """Re-read the customer's subscriptions from Stripe and apply the current one (the
    account's, else the newest live one): for an operator who doubts a missed webhook."""
    if not account.stripe_customer_id:
        return "no Stripe customer"
    subscriptions = [
        s.to_dict() for s in stripe_client.subscription_list(customer=account.stripe_customer_id)
    ]
    if not subscriptions:
        return "no subscription in Stripe"
    live = [s for s in subscriptions if s["status"] in LIVE]
    chosen = next((s for s in subscriptions if s["id"] == account.stripe_subscription_id), None)
    if chosen is None or (chosen["status"] not in LIVE and live):
        chosen = max(live or subscriptions, key=lambda s: s.get("created") or 0)
    return subscription_apply(account=account, subscription=chosen)
