"""POST /billing/webhook/: verify Stripe's signature, store the event by its id, process it once.

Exactly once: the event row is inserted (unique Stripe id) and locked in the transaction that
processes it, so a replay or a concurrent duplicate waits, finds it processed and does nothing.
A failure rolls everything back (the row included) and answers 500: Stripe delivers it again.
"""

import logging
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from billing.models import BillingAccount, StripeEvent
from billing.subscriptions import stripe_client
from billing.subscriptions.state import subscription_apply
from infra.errors import ApplicationError

logger = logging.getLogger(__name__)

INVALID_SIGNATURE = "invalid_signature"
INVALID_SIGNATURE_MESSAGE = "The Stripe-Signature header is missing, wrong or too old."
BILLING_OFFLINE = "billing_offline"
BILLING_OFFLINE_MESSAGE = "Stripe billing is not configured on this server."


def webhook_receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify and process one delivery. Returns the stored event and whether this delivery
    processed it (False: a replay). Raises ApplicationError 400 on a bad signature, writing
    nothing."""
    if not stripe_client.enabled() or not stripe_client.webhook_secret_set():
        raise ApplicationError(BILLING_OFFLINE, BILLING_OFFLINE_MESSAGE, status=404)
    try:
        event = stripe_client.webhook_event(payload=payload, signature=signature)
    except (stripe_client.SignatureVerificationError, ValueError):
        raise ApplicationError(INVALID_SIGNATURE, INVALID_SIGNATURE_MESSAGE, status=400) from None
    return stripe_event_process(event=event.to_dict(for_json=True))


@transaction.atomic
def stripe_event_process(*, event: dict) -> tuple[StripeEvent, bool]:
    row, _ = StripeEvent.objects.get_or_create(
        stripe_id=event["id"],
        defaults={
            "type": event["type"],
            "livemode": bool(event.get("livemode")),
            "stripe_created": datetime.fromtimestamp(event["created"], tz=UTC),
            "payload": event,
        },
    )
    row = StripeEvent.objects.select_for_update().get(pk=row.pk)
    if row.processed_at is not None:
        return row, False
    handler = HANDLERS.get(event["type"])
    obj = event["data"]["object"]
    if handler is None:
        logger.info("Stripe event %s of type %s ignored", event["id"], event["type"])
        account, outcome = None, "ignored: not a type aibaas handles"
    else:
        account, outcome = handler(obj, event["id"])
    row.organization_id = account.organization_id if account else None
    row.outcome = outcome[:255]
    row.processed_at = timezone.now()
    row.save(update_fields=["organization", "outcome", "processed_at"])
    return row, True


def _account_by_customer(customer_id: str | None) -> BillingAccount | None:
    if not customer_id:
        return None
    return BillingAccount.objects.filter(stripe_customer_id=customer_id).first()


def _sync(account: BillingAccount | None, subscription_id: str | None, event_id: str):
    if account is None:
        return None, "no organization has this Stripe customer"
    if not subscription_id:
        return account, "no subscription to sync"
    subscription = stripe_client.subscription_retrieve(subscription_id).to_dict()
    return account, subscription_apply(
        account=account, subscription=subscription, event_id=event_id
    )


def _checkout_completed(session: dict, event_id: str):
    if session.get("mode") != "subscription":
        return None, "ignored: not a subscription checkout"
    account = _account_by_customer(session.get("customer"))
    reference = session.get("client_reference_id") or ""
    if account is None or str(account.organization_id) != reference:
        logger.warning("Checkout %s: customer and organization do not match", session.get("id"))
        return None, "no organization has this customer and reference"
    return _sync(account, session.get("subscription"), event_id)


def _subscription_changed(subscription: dict, event_id: str):
    return _sync(_account_by_customer(subscription.get("customer")), subscription["id"], event_id)


def _invoice_subscription(invoice: dict) -> str | None:
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return details.get("subscription") or invoice.get("subscription")


def _invoice_event(invoice: dict, event_id: str):
    account = _account_by_customer(invoice.get("customer"))
    return _sync(account, _invoice_subscription(invoice), event_id)


def _customer_updated(customer: dict, event_id: str):
    account = _account_by_customer(customer.get("id"))
    if account is None:
        return None, "no organization has this Stripe customer"
    BillingAccount.objects.filter(pk=account.pk).update(
        last_event_id=event_id, last_event_at=timezone.now()
    )
    return account, "customer updated"


HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.paid": _invoice_event,
    "invoice.payment_failed": _invoice_event,
    "customer.updated": _customer_updated,
}
