from django.core.management.base import BaseCommand, CommandError

from billing.subscriptions import stripe_client
from billing.subscriptions.reconciliation import usage_reconcile_with_stripe
from infra.commands import service_errors


class Command(BaseCommand):
    help = (
        "Compare, per organization and hour reported to Stripe's meter, the billable tokens we "
        "metered with what was reported and what Stripe's meter received (its event "
        "summaries); print every difference (none expected). Exit status 1 if any. Also "
        "`manage.py reconcile_usage --stripe`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organization (slug).")

    def handle(self, *args, org=None, **options):
        try:
            with service_errors():
                result = usage_reconcile_with_stripe(organization_slug=org)
        except stripe_client.StripeError as error:
            raise CommandError(f"Stripe could not answer: {error.user_message or error}") from None
        if not result.asked_stripe:
            self.stdout.write("Billing is offline (no STRIPE_SECRET_KEY): outbox only.")
        for total in result.totals:
            received = "" if total.received is None else f", Stripe received {total.received}"
            self.stdout.write(
                f"{total.organization} {total.period}: metered {total.metered} tokens{received}"
            )
        for d in result.differences:
            received = "" if d.received is None else f", Stripe received {d.received}"
            self.stdout.write(
                f"  {d.organization} {d.window_start:%Y-%m-%d %H:00} UTC: metered {d.metered} "
                f"tokens, reported {d.reported} ({d.status}){received}"
            )
        self.stdout.write(f"{len(result.differences)} difference(s).")
        if result.differences:
            raise SystemExit(1)
