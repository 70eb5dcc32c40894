"""A closed organization pays nothing more: its Stripe subscription is canceled at once.

Closing (accounts.signals.organization_closing) marks the cancellation as owed in the closing
transaction; once that commits, a Celery task cancels the subscription at Stripe. A failure is
recorded on the account (attempts, last error, next attempt, shown in the admin), logged as an
error and retried with backoff by the periodic sweep until Stripe has canceled it: never
dropped. Canceling is idempotent: a subscription Stripe already ended counts as done.
"""

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import Organization
from billing.models import BillingAccount
from billing.subscriptions import stripe_client
from billing.subscriptions.state import LIVE, subscription_apply

logger = logging.getLogger(__name__)

CANCELED_ON_CLOSE = "billing.canceled_on_close"
CLOSE_ACTOR = Actor.for_system("billing")
MAX_BACKOFF_SECONDS = 3600
ENDED = ("canceled", "incomplete_expired")
BILLING_OFFLINE_ERROR = "Billing is offline (no STRIPE_SECRET_KEY): Stripe cannot be called."


def cancellation_owe(*, organization: Organization) -> int | None:
    """Mark the organization's live subscription as owed a cancellation (in the caller's
    transaction). Returns the account's id to cancel once it commits, or None (nothing live)."""
    account = (
        BillingAccount.objects.select_for_update()
        .filter(organization=organization, subscription_status__in=LIVE)
        .exclude(stripe_subscription_id="")
        .first()
    )
    if account is None:
        return None
    now = timezone.now()
    account.cancel_owed_since = account.cancel_owed_since or now
    account.cancel_next_attempt_at = now
    account.save(update_fields=["cancel_owed_since", "cancel_next_attempt_at", "updated_at"])
    return account.pk


def _cancel_at_stripe(subscription_id: str) -> dict:
    """Stripe's subscription after canceling it now; one it already ended is returned as is."""
    try:
        return stripe_client.subscription_cancel(subscription_id).to_dict()
    except stripe_client.InvalidRequestError:
        subscription = stripe_client.subscription_retrieve(subscription_id).to_dict()
        if subscription["status"] in ENDED:
            return subscription
        raise


def cancellation_send(*, account_id: int) -> str:
    """Cancel the owed subscription of account `account_id` at Stripe, or record why not (and
    when to try again). Returns what happened. A row another worker holds is left to it."""
    with transaction.atomic():
        account = (
            BillingAccount.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("organization")
            .filter(pk=account_id, cancel_owed_since__isnull=False)
            .first()
        )
        if account is None:
            return "nothing owed"
        subscription_id = account.stripe_subscription_id
        try:
            if not stripe_client.enabled():
                raise RuntimeError(BILLING_OFFLINE_ERROR)
            subscription = _cancel_at_stripe(subscription_id)
        except (stripe_client.StripeError, RuntimeError) as error:
            account.cancel_attempts += 1
            backoff = min(60 * 2 ** (account.cancel_attempts - 1), MAX_BACKOFF_SECONDS)
            account.cancel_next_attempt_at = timezone.now() + timedelta(seconds=backoff)
            account.cancel_last_error = str(error)[:2000]
            account.save()
            logger.error(
                "Canceling subscription %s of closed organization %s failed (attempt %s, next "
                "in %ss): %s",
                subscription_id,
                account.organization.slug,
                account.cancel_attempts,
                backoff,
                error,
            )
            return "failed"
        attempts = account.cancel_attempts + 1
        BillingAccount.objects.filter(pk=account.pk).update(
            cancel_owed_since=None,
            cancel_next_attempt_at=None,
            cancel_attempts=0,
            cancel_last_error="",
        )
        outcome = subscription_apply(account=account, subscription=subscription)
        audit_record(
            action=CANCELED_ON_CLOSE,
            actor=CLOSE_ACTOR,
            organization=account.organization,
            target_type="subscription",
            target_id=subscription_id,
            metadata={"status": subscription["status"], "attempts": attempts},
        )
        logger.info("Closed organization %s: %s", account.organization.slug, outcome)
        return outcome


def cancellations_due(*, now: datetime | None = None) -> list[int]:
    """The accounts whose owed cancellation is due a (new) attempt."""
    return list(
        BillingAccount.objects.filter(
            cancel_owed_since__isnull=False, cancel_next_attempt_at__lte=now or timezone.now()
        )
        .order_by("cancel_next_attempt_at")
        .values_list("id", flat=True)
    )
