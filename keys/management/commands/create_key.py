from django.core.management.base import BaseCommand
from django.utils import timezone

from accounts.actors import Actor
from accounts.selectors import organization_get
from infra.commands import duration, service_errors
from keys.management.commands._common import write_issued
from keys.services import api_key_create


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


class Command(BaseCommand):
    help = "Issue an API key for an organization. Prints the raw key once: store it now."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization slug.")
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", help="Comma-separated (default: inference).")
        parser.add_argument("--models", help="Comma-separated model allow-list (default: all).")
        parser.add_argument(
            "--rpm", type=int, help="Requests per minute, at most the plan's (default: plan)."
        )
        parser.add_argument(
            "--rpd", type=int, help="Requests per day, at most the plan's (default: plan)."
        )
        parser.add_argument(
            "--tpm", type=int, help="Tokens per minute, at most the plan's (default: plan)."
        )
        parser.add_argument(
            "--tpd", type=int, help="Tokens per day, at most the plan's (default: plan)."
        )
        parser.add_argument("--expires-in", type=duration, help="e.g. 30d, 12h (default: never).")
        parser.add_argument("--test", action="store_true", help="A sk_test_ key: demo models only.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **opts):
        expires_in = opts["expires_in"]
        expires_at = None if expires_in is None else timezone.now() + expires_in
        with service_errors():
            organization = organization_get(slug=opts["org"])
            issued = api_key_create(
                organization=organization,
                name=opts["name"],
                actor=Actor.for_system("manage.py create_key"),
                scopes=_csv(opts["scopes"]),
                models=_csv(opts["models"]),
                requests_per_minute=opts["rpm"],
                requests_per_day=opts["rpd"],
                tokens_per_minute=opts["tpm"],
                tokens_per_day=opts["tpd"],
                expires_at=expires_at,
                test_mode=opts["test"],
            )
        key = issued.api_key
        headline = (
            f"Created key {key.key_id} ({key.name}) for {organization.slug}: "
            f"scopes {', '.join(key.scopes)}"
        )
        write_issued(self, issued, headline, as_json=opts["json"])
