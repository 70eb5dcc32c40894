from django.core.management.base import BaseCommand, CommandError

from billing.subscriptions import stripe_client
from billing.subscriptions.sync import plans_sync_to_stripe


class Command(BaseCommand):
    help = (
        "Create or link each paid plan's Stripe Product, monthly Price and metered Price (by "
        "lookup key; idempotent) and print what was created, replaced or found unchanged."
    )

    def handle(self, *args, **options):
        if not stripe_client.enabled():
            raise CommandError("STRIPE_SECRET_KEY is not set: billing is offline.")
        try:
            changes = plans_sync_to_stripe()
        except stripe_client.StripeError as error:
            raise CommandError(f"Stripe refused: {error.user_message or error}") from error
        for change in changes:
            self.stdout.write(str(change))
        changed = sum(change.action not in ("unchanged", "linked") for change in changes)
        self.stdout.write(f"{changed} change(s) in Stripe.")
