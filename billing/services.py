from decimal import Decimal

from django.db import transaction

from billing.defaults import seed_plans
from billing.models import ModelPrice, Plan


@transaction.atomic
def plan_seed_defaults() -> int:
    """Create the default tiers that are missing. Idempotent; never overwrites edits."""
    return seed_plans(Plan)


@transaction.atomic
def model_price_set(
    *,
    model,
    input_per_million: Decimal,
    output_per_million: Decimal,
    cached_input_per_million: Decimal | None = None,
) -> ModelPrice:
    """Create or replace `model`'s price (USD per million tokens), validated like the admin's
    form. Saving it makes the gateway reload its prices (aibaas/gateway/signals.py)."""
    price = ModelPrice.objects.filter(model=model).first() or ModelPrice(model=model)
    price.input_per_million = input_per_million
    price.output_per_million = output_per_million
    price.cached_input_per_million = cached_input_per_million
    price.full_clean()
    price.save()
    return price
