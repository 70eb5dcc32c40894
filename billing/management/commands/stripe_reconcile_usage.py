from django.core.management.base import BaseCommand

from billing.subscriptions.usage import usage_differences


class Command(BaseCommand):
    help = (
        "Compare the billable tokens recorded per organization and hour with what was reported "
        "to Stripe's meter; print every difference (none expected). Exit status 1 if any."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organization (slug).")

    def handle(self, *args, org=None, **options):
        differences = usage_differences(organization_slug=org)
        for d in differences:
            self.stdout.write(
                f"org {d['organization_id']} {d['window_start']:%Y-%m-%d %H:00} UTC: metered "
                f"{d['metered']} tokens, reported {d['reported']} ({d['status']})"
            )
        self.stdout.write(f"{len(differences)} difference(s).")
        if differences:
            raise SystemExit(1)
