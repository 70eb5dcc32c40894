import json

from django.core.management.base import BaseCommand, CommandError

from accounts.actors import Actor
from accounts.selectors import organization_get
from infra.commands import service_errors
from metering.quota import quota_reset, quota_usage


class Command(BaseCommand):
    help = (
        "Zero an organization's monthly quota counter for the current calendar month (UTC), "
        "audited as quota.reset. Earlier months and usage events are not touched."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug", nargs="?", help="Organization slug.")
        parser.add_argument("--org", help="Organization slug (same as the positional argument).")
        parser.add_argument("--reason", default="", help="Recorded in the audit log.")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args, **opts):
        slug = opts["slug"] or opts["org"]
        if not slug:
            raise CommandError("Give the organization's slug: reset_usage SLUG (or --org SLUG).")
        if opts["slug"] and opts["org"] and opts["slug"] != opts["org"]:
            raise CommandError(f"Two different slugs given: {opts['slug']!r}, {opts['org']!r}.")
        with service_errors():
            organization = organization_get(slug=slug)
        period, requests_before, tokens_before = quota_usage(organization.pk)
        quota_reset(
            organization, actor=Actor.for_system("manage.py reset_usage"), reason=opts["reason"]
        )
        _, requests_after, tokens_after = quota_usage(organization.pk)
        if opts["json"]:
            result = {
                "organization": organization.slug,
                "period": f"{period:%Y-%m}",
                "before": {"requests": requests_before, "tokens": tokens_before},
                "after": {"requests": requests_after, "tokens": tokens_after},
            }
            self.stdout.write(json.dumps(result, indent=2))
            return
        self.stdout.write(
            f"{organization.slug} {period:%Y-%m}: requests {requests_before} -> {requests_after}, "
            f"tokens {tokens_before} -> {tokens_after}"
        )
