"""What owners and admins do with billing: Checkout to subscribe, the Customer Portal, cancel or
resume at period end. Stripe then tells us the outcome by webhook (state.py); nothing here
changes an organization's plan."""

from django.db import transaction
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import Organization
from billing.models import BillingAccount, Plan
from billing.subscriptions import stripe_client
from billing.subscriptions.state import LIVE, subscription_apply
from infra.errors import ApplicationError

BILLING_OFFLINE = "billing_offline"
BILLING_OFFLINE_MESSAGE = "Billing is offline: the operators set plans on this server."
BILLING_FORBIDDEN = "billing_forbidden"
BILLING_FORBIDDEN_MESSAGE = "Only owners and admins can change the plan or the payment method."
PLAN_NOT_FOR_SALE = "plan_not_for_sale"
PLAN_NOT_FOR_SALE_MESSAGE = "The {plan} plan cannot be bought here; contact us."
ALREADY_SUBSCRIBED = "already_subscribed"
ALREADY_SUBSCRIBED_MESSAGE = (
    "This organization already has a subscription: change plan in the billing portal."
)
NO_SUBSCRIPTION = "no_subscription"
NO_SUBSCRIPTION_MESSAGE = "This organization has no subscription to change."

CHECKOUT_STARTED = "billing.checkout_started"
CANCEL_REQUESTED = "billing.cancel_requested"
CANCEL_WITHDRAWN = "billing.cancel_withdrawn"


def _check(actor: Actor) -> None:
    if not stripe_client.enabled():
        raise ApplicationError(BILLING_OFFLINE, BILLING_OFFLINE_MESSAGE, status=409)
    if not actor.is_admin:
        raise ApplicationError(BILLING_FORBIDDEN, BILLING_FORBIDDEN_MESSAGE, status=403)


def billing_account_get(*, organization: Organization) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(organization=organization)
    return account


@transaction.atomic
def customer_ensure(*, organization: Organization) -> BillingAccount:
    """The organization's one Stripe Customer, created the first time (the row lock and the
    idempotency key keep two concurrent first checkouts to one customer)."""
    billing_account_get(organization=organization)
    account = BillingAccount.objects.select_for_update().get(organization=organization)
    if not account.stripe_customer_id:
        customer = stripe_client.customer_create(
            name=organization.name,
            metadata={"organization_id": str(organization.pk), "organization": organization.slug},
            idempotency_key=f"aibaas-customer-{organization.pk}",
        )
        account.stripe_customer_id = customer.id
        account.save(update_fields=["stripe_customer_id", "updated_at"])
    return account


def checkout_session_start(
    *, organization: Organization, plan: Plan, actor: Actor, success_url: str, cancel_url: str
) -> str:
    """A Stripe Checkout Session (subscription mode) for `plan`; returns the URL to send the
    customer to. The plan changes only when Stripe's webhook confirms the subscription."""
    _check(actor)
    if not (plan.is_public and plan.stripe_price_id):
        message = PLAN_NOT_FOR_SALE_MESSAGE.format(plan=plan.name)
        raise ApplicationError(PLAN_NOT_FOR_SALE, message, status=400)
    account = customer_ensure(organization=organization)
    if account.stripe_subscription_id and account.subscription_status in LIVE:
        raise ApplicationError(ALREADY_SUBSCRIBED, ALREADY_SUBSCRIBED_MESSAGE, status=409)
    metadata = {
        "organization_id": str(organization.pk),
        "organization": organization.slug,
        "plan": plan.slug,
    }
    line_items: list[dict] = [{"price": plan.stripe_price_id, "quantity": 1}]
    if plan.stripe_metered_price_id:
        line_items.append({"price": plan.stripe_metered_price_id})
    session = stripe_client.checkout_session_create(
        {
            "mode": "subscription",
            "customer": account.stripe_customer_id,
            "client_reference_id": str(organization.pk),
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
            "line_items": line_items,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
    )
    BillingAccount.objects.filter(pk=account.pk).update(
        checkout_plan=plan, checkout_started_at=timezone.now()
    )
    audit_record(
        action=CHECKOUT_STARTED,
        actor=actor,
        organization=organization,
        target_type="plan",
        target_id=plan.slug,
        target_label=plan.name,
        metadata={"checkout_session": session.id},
    )
    return session.url


def checkout_abandon(*, organization: Organization) -> None:
    """The customer came back from Checkout without paying: nothing is pending any more."""
    BillingAccount.objects.filter(organization=organization).update(
        checkout_plan=None, checkout_started_at=None
    )


def portal_session_start(*, organization: Organization, actor: Actor, return_url: str) -> str:
    """A Stripe Customer Portal session (payment methods, invoices, plan changes, cancelling)."""
    _check(actor)
    account = customer_ensure(organization=organization)
    session = stripe_client.portal_session_create(
        customer=account.stripe_customer_id, return_url=return_url
    )
    return session.url


def subscription_cancel_at_period_end(
    *, organization: Organization, actor: Actor, cancel: bool = True
) -> BillingAccount:
    """Cancel (back to free when the paid period ends) or withdraw a cancellation. The account
    takes Stripe's answer at once; the webhook that follows changes nothing more."""
    _check(actor)
    account = billing_account_get(organization=organization)
    if not account.stripe_subscription_id or account.subscription_status not in LIVE:
        raise ApplicationError(NO_SUBSCRIPTION, NO_SUBSCRIPTION_MESSAGE, status=409)
    subscription = stripe_client.subscription_update(
        account.stripe_subscription_id, {"cancel_at_period_end": cancel}
    )
    subscription_apply(account=account, subscription=subscription.to_dict())
    audit_record(
        action=CANCEL_REQUESTED if cancel else CANCEL_WITHDRAWN,
        actor=actor,
        organization=organization,
        target_type="subscription",
        target_id=account.stripe_subscription_id,
    )
    account.refresh_from_db()
    return account


CANCELED_BY_OPERATOR = "billing.canceled_now"


def subscription_cancel_now(*, account: BillingAccount, actor: Actor) -> str:
    """An operator's choice: end the subscription at once instead of at period end; the
    organization goes to free now. Returns what happened."""
    if not account.stripe_subscription_id or account.subscription_status not in LIVE:
        raise ApplicationError(NO_SUBSCRIPTION, NO_SUBSCRIPTION_MESSAGE, status=409)
    subscription = stripe_client.subscription_cancel(account.stripe_subscription_id)
    outcome = subscription_apply(account=account, subscription=subscription.to_dict())
    audit_record(
        action=CANCELED_BY_OPERATOR,
        actor=actor,
        organization=account.organization,
        target_type="subscription",
        target_id=account.stripe_subscription_id,
    )
    return outcome
