"""The seeded pricing tiers of DESIGN.md. Limits of None are unlimited.

Read by the seeding data migration and by `bootstrap`; both create the tiers that are missing
and never overwrite a tier an operator has edited.
"""

from decimal import Decimal

DEFAULT_PLAN_SLUG = "free"

DEFAULT_PLANS: list[dict] = [
    {
        "slug": "free",
        "name": "Free",
        "monthly_price": Decimal("0.00"),
        "requests_per_minute": 10,
        "requests_per_day": 100,
        "tokens_per_minute": 2_000,
        "tokens_per_day": 10_000,
        "monthly_request_quota": 3_000,
        "monthly_token_quota": 300_000,
        "max_keys": 3,
        "sort_order": 10,
    },
    {
        "slug": "starter",
        "name": "Starter",
        "monthly_price": Decimal("29.00"),
        "requests_per_minute": 60,
        "requests_per_day": 1_000,
        "tokens_per_minute": 20_000,
        "tokens_per_day": 100_000,
        "monthly_request_quota": 30_000,
        "monthly_token_quota": 3_000_000,
        "max_keys": 10,
        "sort_order": 20,
    },
    {
        "slug": "pro",
        "name": "Pro",
        "monthly_price": Decimal("199.00"),
        "requests_per_minute": 300,
        "requests_per_day": 10_000,
        "tokens_per_minute": 100_000,
        "tokens_per_day": 1_000_000,
        "monthly_request_quota": 300_000,
        "monthly_token_quota": 30_000_000,
        "max_keys": 50,
        "sort_order": 30,
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "monthly_price": None,
        "requests_per_minute": None,
        "requests_per_day": None,
        "tokens_per_minute": None,
        "tokens_per_day": None,
        "monthly_request_quota": None,
        "monthly_token_quota": None,
        "max_keys": None,
        "sort_order": 40,
    },
]


def seed_plans(plan_model) -> int:
    """Create the default tiers missing from `plan_model`; return how many were created.

    Takes the model class so the data migration can pass its historical model: only the fields
    that model has are set, so later schema changes never break the old migration.
    """
    fields = {f.name for f in plan_model._meta.get_fields()}
    created = 0
    for spec in DEFAULT_PLANS:
        values = {k: v for k, v in spec.items() if k in fields and k != "slug"}
        _, was_created = plan_model.objects.get_or_create(slug=spec["slug"], defaults=values)
        created += was_created
    return created
