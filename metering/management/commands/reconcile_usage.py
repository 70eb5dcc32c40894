import json

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import organization_get
from infra.errors import ApplicationError
from metering.selectors import usage_reconcile


class Command(BaseCommand):
    help = (
        "Check that the monthly quota counters (requests, tokens) agree with the billable usage "
        "events, per organization, and list the dead-letter stream's events (with Redis). "
        "Prints every difference; exits with status 1 if there is any."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Organization slug (default: every organization).")
        parser.add_argument("--month", help="YYYY-MM (UTC); default: the current month.")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
        parser.add_argument(
            "--stripe",
            action="store_true",
            help="Instead: compare what we metered with what Stripe's meter received, per "
            "organization and hour (billing's stripe_reconcile_usage; --org applies, --month and "
            "--json do not).",
        )

    def handle(self, *args, **opts):
        if opts["stripe"]:
            # By name: billing sits above metering, which imports none of it.
            args = ["--org", opts["org"]] if opts["org"] else []
            call_command("stripe_reconcile_usage", *args, stdout=self.stdout, stderr=self.stderr)
            return
        try:
            organization = organization_get(slug=opts["org"]) if opts["org"] else None
            result = usage_reconcile(organization=organization, month=opts["month"])
        except ApplicationError as error:
            raise CommandError(error.message) from None
        if opts["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        else:
            self._print(result)
        if result.difference_count:
            raise CommandError(f"{result.difference_count} difference(s) in {result.period}")

    def _print(self, result) -> None:
        write = self.stdout.write
        for org in result.organizations:
            counter, events = org.counter, org.events
            figures = (
                f"counter {counter['requests'] - counter['leased_requests']} requests, "
                f"{counter['tokens'] - counter['leased_tokens']} tokens"
                if counter is not None
                else "no counter"
            )
            line = (
                f"{org.organization} {org.period}: {figures}; events {events['requests']} "
                f"requests, {events['tokens']} tokens"
            )
            if not org.differences:
                write(f"{line}: ok")
                continue
            write(f"{line}: DIFFERENT")
            for difference in org.differences:
                write(
                    f"  {difference.field}: counter {difference.counter}, events "
                    f"{difference.events} ({difference.difference:+d})"
                )
        if result.dead_letters is not None and "error" in result.dead_letters:
            write(f"dead-letter stream: {result.dead_letters['error']}")
        elif result.dead_letters is not None:
            write(f"dead-letter stream: {result.dead_letters['count']} event(s) not stored")
            for entry in result.dead_letters["entries"]:
                write(
                    f"  {entry['entry_id']} request {entry['request_id']} organization "
                    f"{entry['organization_id']}: {entry['reason']}"
                )
            write(f"usage stream backlog (not drained yet): {result.stream_backlog}")
        write(f"{result.difference_count} difference(s)")
