"""Billing listens to accounts: a closed organization's subscription is canceled at Stripe
(closing.py), once the closing transaction has committed."""

from django.db import transaction
from django.dispatch import receiver

from accounts.signals import organization_closing
from billing.subscriptions.closing import cancellation_owe


@receiver(organization_closing, dispatch_uid="billing-organization-closing")
def organization_closing_cancels_subscription(sender, organization, actor, **kwargs) -> None:
    account_id = cancellation_owe(organization=organization)
    if account_id is not None:
        from billing.subscriptions.tasks import cancel_subscription

        transaction.on_commit(lambda: cancel_subscription.delay(account_id))
