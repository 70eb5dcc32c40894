from django.core.management.base import BaseCommand

from accounts.actors import Actor
from infra.commands import service_errors
from keys.selectors import api_key_get_any
from keys.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its public key id. Takes effect on every instance within 1 s."

    def add_arguments(self, parser):
        parser.add_argument("key_id")
        parser.add_argument("--reason", default="", help="Recorded in the key and the audit log.")

    def handle(self, *args, **opts):
        with service_errors():
            key = api_key_get_any(key_id=opts["key_id"])
        already = key.revoked_at is not None
        key = api_key_revoke(
            api_key=key, actor=Actor.for_system("manage.py revoke_key"), reason=opts["reason"]
        )
        state = "was already revoked" if already else "revoked"
        self.stdout.write(f"Key {key.key_id} ({key.name}, {key.organization.slug}) {state}.")
