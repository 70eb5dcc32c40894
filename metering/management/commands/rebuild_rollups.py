from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import organization_get
from infra.commands import service_errors
from metering.rollups.maintenance import rollup_rebuild


def _day(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"--since must be a date, YYYY-MM-DD: {text!r}") from None


class Command(BaseCommand):
    help = (
        "Recompute the hourly and daily usage rollups from the usage events: of one "
        "organization (--org) or all, from a UTC day (--since YYYY-MM-DD) or from the start. "
        "Safe while the gateway and the drain run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Organization slug (default: every organization).")
        parser.add_argument("--since", help="First UTC day to recompute, YYYY-MM-DD.")

    def handle(self, *args, **opts):
        organization = None
        if opts["org"]:
            with service_errors():
                organization = organization_get(slug=opts["org"])
        since = _day(opts["since"]) if opts["since"] else None
        written = rollup_rebuild(organization=organization, since=since)
        scope = organization.slug if organization else "all organizations"
        start = f" since {since:%Y-%m-%d}" if since else ""
        self.stdout.write(f"rebuilt {written} rollup rows for {scope}{start}")
