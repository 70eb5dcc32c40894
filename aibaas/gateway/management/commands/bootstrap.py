from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.actors import Actor
from accounts.models import Organization, User
from accounts.services import membership_add, organization_create, user_create
from aibaas.gateway.services import DEMO_MODELS, model_seed_demo
from billing.defaults import DEFAULT_PLANS
from billing.services import plan_seed_defaults
from keys.services import api_key_create

DEMO_ORG_SLUG = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-change-me"


class Command(BaseCommand):
    help = (
        "Seed what a fresh installation needs: the default plans, the demo models and their "
        "prices, and a demo organization "
        f"'{DEMO_ORG_SLUG}' owned by {DEMO_EMAIL} with a demo API key (printed only when it is "
        "created). With --no-demo (production), the plans only. Idempotent: re-running changes "
        "nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-demo",
            action="store_true",
            help="Seed the plans only: no demo models, prices, organization or user.",
        )
        parser.add_argument(
            "--demo-models",
            action="store_true",
            help="With --no-demo: also seed the built-in demo models and their prices.",
        )

    @transaction.atomic
    def handle(self, *args, **opts):
        created = plan_seed_defaults()
        self.stdout.write(
            f"Plans: {created} created, {len(DEFAULT_PLANS) - created} already present"
        )
        if opts["demo_models"] or not opts["no_demo"]:
            created = model_seed_demo()
            self.stdout.write(
                f"Demo models: {created} created, {len(DEMO_MODELS) - created} already present"
            )
        if opts["no_demo"]:
            return
        user = User.objects.filter(email=DEMO_EMAIL).first()
        new_user = user is None
        if new_user:
            user = user_create(email=DEMO_EMAIL, password=None, full_name="Demo User")
            # The demo password is public by design (it is printed below); skip the validators.
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        organization = Organization.objects.filter(slug=DEMO_ORG_SLUG).first()
        if organization is None:
            organization = organization_create(name="Demo", owner=user, slug=DEMO_ORG_SLUG)
            self.stdout.write(f"Created demo organization '{organization.slug}'")
        else:
            membership_add(organization=organization, user=user, role="owner")
        self.stdout.write("")
        self.stdout.write("Demo login (dashboard at /dashboard/):")
        self.stdout.write(f"  email:    {DEMO_EMAIL}")
        if new_user:
            self.stdout.write(f"  password: {DEMO_PASSWORD}")
        else:
            self.stdout.write(f"  password: {DEMO_PASSWORD} (unless it was changed since)")
        if not organization.api_keys.exists():
            # Only when it creates one: the raw key exists nowhere else, so this is its one showing.
            issued = api_key_create(
                organization=organization,
                name="demo key",
                actor=Actor.for_system("manage.py bootstrap"),
                scopes=["inference", "usage:read"],
            )
            self.stdout.write("")
            self.stdout.write("Demo API key (shown once; use it as api_key= in any OpenAI SDK):")
            self.stdout.write(f"  {issued.raw_key}")
