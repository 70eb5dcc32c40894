"""Writes on the model registry: seeding the demo models, invalidating the per-process caches."""

from decimal import Decimal

from django.db import transaction

from aibaas.gateway import registry
from aibaas.gateway.models import AIModel, ModelKind, ProviderKind

# The built-in models of a fresh installation (bootstrap). Prices are USD per million tokens.
DEMO_MODELS: list[dict] = [
    {
        "name": "demo-chat",
        "kind": ModelKind.CHAT,
        "provider": ProviderKind.DEMO,
        "context_window": 8192,
        "test_mode_allowed": True,
        "response_cache_ttl": 0,
        "description": "Built-in deterministic chat model: no network, no weights.",
        "price": {
            "input_per_million": Decimal("0.50"),
            "output_per_million": Decimal("1.50"),
        },
    },
    {
        "name": "demo-embed",
        "kind": ModelKind.EMBEDDINGS,
        "provider": ProviderKind.DEMO,
        "context_window": 8192,
        "test_mode_allowed": True,
        "response_cache_ttl": 0,
        "embedding_dimensions": 256,
        "description": "Built-in deterministic embeddings model (256 dimensions).",
        "price": {
            "input_per_million": Decimal("0.02"),
            "output_per_million": Decimal("0"),
        },
    },
]


def model_registry_invalidate() -> None:
    """Make this process reload models and prices now, and again once the transaction commits
    (a reload that raced the write may have read the old rows). Other processes follow within
    REGISTRY_TTL / PRICING_TTL seconds."""
    from billing import pricing

    def forget() -> None:
        registry.invalidate()
        pricing.invalidate()

    forget()
    transaction.on_commit(forget)


@transaction.atomic
def model_seed_demo() -> int:
    """Create the demo models (and their prices) that are missing; return how many models were
    created. Idempotent, and never overwrites a row an operator has edited."""
    from billing.models import ModelPrice

    created = 0
    for spec in DEMO_MODELS:
        values = {k: v for k, v in spec.items() if k not in ("name", "price")}
        model, was_created = AIModel.objects.get_or_create(name=spec["name"], defaults=values)
        created += was_created
        ModelPrice.objects.get_or_create(model=model, defaults=spec["price"])
    model_registry_invalidate()
    return created
