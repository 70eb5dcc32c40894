"""Writes on the model registry: seeding the demo models, adding a model server's model,
invalidating the per-process caches."""

from dataclasses import asdict, dataclass
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction

from aibaas.gateway import registry
from aibaas.gateway.models import AIModel, ModelKind, ProviderKind, Upstream

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


@dataclass(frozen=True, kw_only=True)
class ModelServerModel:
    """One model of a model server (vLLM, Ollama, llama.cpp, OpenAI...) as `add_model` takes
    it: the public model, its one upstream and its price (USD per million tokens)."""

    name: str
    kind: str
    base_url: str
    upstream_model: str
    api_key_env: str = ""
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None
    context_window: int = 8192


MODEL_EXISTS = "A model named '{name}' already exists with other settings ({fields}); change it "
MODEL_EXISTS += "in Django admin (Gateway > AI models) or choose another name."


def _as_added(model: AIModel) -> ModelServerModel | None:
    """The existing model in add_model's terms, or None when it is not one upstream + price."""
    upstreams = list(model.upstreams.all())
    price = getattr(model, "price", None)  # None when the model has no price row
    if model.provider != ProviderKind.OPENAI_COMPATIBLE or len(upstreams) != 1 or price is None:
        return None
    upstream = upstreams[0]
    return ModelServerModel(
        name=model.name,
        kind=model.kind,
        base_url=upstream.base_url,
        upstream_model=upstream.upstream_model,
        api_key_env=upstream.api_key_env,
        input_per_million=price.input_per_million,
        output_per_million=price.output_per_million,
        cached_input_per_million=price.cached_input_per_million,
        context_window=model.context_window,
    )


@transaction.atomic
def model_add(*, spec: ModelServerModel) -> tuple[AIModel, bool]:
    """Create the public model `spec.name` served by one OpenAI-compatible upstream, with its
    price; return (model, created). Idempotent: the same spec again changes nothing and returns
    created=False; a model of that name with other settings is a ValidationError (never
    overwritten: an operator may have tuned it). Every field is validated as in the admin."""
    from billing.services import model_price_set

    existing = AIModel.objects.select_for_update().filter(name=spec.name).first()
    if existing is not None:
        current = _as_added(existing)
        if current == spec:
            return existing, False
        differing = (
            ["provider, upstreams or price"]
            if current is None
            else [k for k, v in asdict(spec).items() if asdict(current)[k] != v]
        )
        raise ValidationError(MODEL_EXISTS.format(name=spec.name, fields=", ".join(differing)))
    model = AIModel(
        name=spec.name,
        kind=spec.kind,
        provider=ProviderKind.OPENAI_COMPATIBLE,
        context_window=spec.context_window,
    )
    model.full_clean()
    model.save()
    upstream = Upstream(
        model=model,
        base_url=spec.base_url,
        upstream_model=spec.upstream_model,
        api_key_env=spec.api_key_env,
    )
    upstream.full_clean()
    upstream.save()
    model_price_set(
        model=model,
        input_per_million=spec.input_per_million,
        output_per_million=spec.output_per_million,
        cached_input_per_million=spec.cached_input_per_million,
    )
    model_registry_invalidate()
    return model, True


def model_connection_test(*, model: AIModel):
    """Probe each upstream of `model` (enabled or not): [(upstream, [ProbeStep, ...])]. Reads
    nothing but the rows and the upstreams' answers; a demo model has none to probe."""
    from aibaas.gateway.providers.openai_compatible.probe import probe
    from aibaas.gateway.selectors import upstream_spec_from

    return [
        (upstream, probe(upstream_spec_from(upstream), kind=model.kind))
        for upstream in model.upstreams.order_by("id")
    ]
