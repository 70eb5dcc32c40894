from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import User
from accounts.services import organization_create, user_create
from billing.selectors import plan_get
from infra.commands import service_errors


class Command(BaseCommand):
    help = "Create an organization (tenant) with an owner. Prints the new slug on its last line."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner-email", required=True)
        parser.add_argument("--plan", default="free", help="Plan slug (default: free).")
        parser.add_argument(
            "--password",
            help="Password for a new owner account. Without it a new owner gets no usable "
            "password and sets one through password reset. Ignored for an existing user.",
        )
        parser.add_argument("--slug", help="Slug to use instead of one derived from the name.")

    def handle(self, *args, **opts):
        with service_errors(), transaction.atomic():
            plan = plan_get(slug=opts["plan"])
            owner = User.objects.filter(email__iexact=opts["owner_email"].strip()).first()
            if owner is None:
                owner = user_create(email=opts["owner_email"], password=opts["password"])
                self.stdout.write(f"Created user {owner.email}")
            organization = organization_create(
                name=opts["name"], owner=owner, plan=plan, slug=opts["slug"]
            )
        self.stdout.write(
            f"Created organization {organization.name!r} on plan {plan.slug}, owner {owner.email}"
        )
        self.stdout.write(organization.slug)
