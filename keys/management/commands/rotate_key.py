from django.core.management.base import BaseCommand

from accounts.actors import Actor
from infra.commands import duration, service_errors
from keys.management.commands._common import write_issued
from keys.selectors import api_key_get_any
from keys.services import api_key_rotate


class Command(BaseCommand):
    help = (
        "Replace a key with a new one with the same settings. The old key keeps working for "
        "the grace period (default 24h; --grace 0 ends it at once). Prints the new key once."
    )

    def add_arguments(self, parser):
        parser.add_argument("key_id")
        parser.add_argument(
            "--grace", type=duration, default="24h", help="e.g. 24h, 30m, 0 (default 24h)."
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        with service_errors():
            key = api_key_get_any(key_id=opts["key_id"])
            issued = api_key_rotate(
                api_key=key, actor=Actor.for_system("manage.py rotate_key"), grace=opts["grace"]
            )
        headline = (
            f"Rotated {key.key_id} -> {issued.api_key.key_id}; the old key stops working at "
            f"{issued.replaced.expires_at:%Y-%m-%d %H:%M:%S %Z}."
        )
        write_issued(self, issued, headline, as_json=opts["json"])
