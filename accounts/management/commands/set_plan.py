from django.core.management.base import BaseCommand

from accounts.actors import Actor
from accounts.selectors import organization_get
from accounts.services import organization_set_plan
from billing.selectors import plan_get
from infra.commands import service_errors


class Command(BaseCommand):
    help = "Move an organization to another plan."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization slug.")
        parser.add_argument("--plan", required=True, help="Plan slug.")

    def handle(self, *args, **opts):
        with service_errors():
            organization = organization_get(slug=opts["org"])
            plan = plan_get(slug=opts["plan"])
        previous = organization.plan.slug
        organization_set_plan(
            organization=organization, plan=plan, actor=Actor.for_system("manage.py set_plan")
        )
        self.stdout.write(f"{organization.slug}: plan {previous} -> {plan.slug}")
