from django.db import transaction

from billing.defaults import seed_plans
from billing.models import Plan


@transaction.atomic
def plan_seed_defaults() -> int:
    """Create the default tiers that are missing. Idempotent; never overwrites edits."""
    return seed_plans(Plan)
