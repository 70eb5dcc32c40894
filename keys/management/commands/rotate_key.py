from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.actors import Actor
from aibaas.durations import parse_duration
from aibaas.errors import ApplicationError
from keys.management.commands._common import key_json
from keys.selectors import api_key_get_any
from keys.services import api_key_rotate


class Command(BaseCommand):
    help = (
        "Replace a key with a new one with the same settings. The old key keeps working for "
        "the grace period (default 24h; --grace 0 ends it at once). Prints the new key once."
    )

    def add_arguments(self, parser):
        parser.add_argument("key_id")
        parser.add_argument("--grace", default="24h", help="e.g. 24h, 30m, 0 (default 24h).")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        try:
            grace = parse_duration(opts["grace"])
            key = api_key_get_any(key_id=opts["key_id"])
            issued = api_key_rotate(
                api_key=key, actor=Actor.for_system("manage.py rotate_key"), grace=grace
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        except ApplicationError as error:
            raise CommandError(error.message) from None
        new = issued.api_key
        if opts["json"]:
            self.stdout.write(key_json(new, issued.raw_key))
            return
        self.stdout.write(
            f"Rotated {key.key_id} -> {new.key_id}; the old key stops working at "
            f"{issued.replaced.expires_at:%Y-%m-%d %H:%M:%S %Z}."
        )
        self.stdout.write("This is the only time the new key is shown; store it now:")
        self.stdout.write(issued.raw_key)
