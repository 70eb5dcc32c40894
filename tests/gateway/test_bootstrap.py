"""`bootstrap` seeds the demo models and their prices, idempotently, keeping operator edits;
`--no-demo` (production) seeds none unless `--demo-models` asks."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from aibaas.gateway import registry
from aibaas.gateway.models import AIModel
from aibaas.gateway.services import DEMO_MODELS, model_seed_demo
from billing import pricing
from billing.models import ModelPrice

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("bootstrap", *args, stdout=out)
    return out.getvalue()


def test_bootstrap_seeds_the_demo_models_and_prices():
    output = run("--no-demo", "--demo-models")

    assert "Demo models: 2 created, 0 already present" in output
    chat = AIModel.objects.get(name="demo-chat")
    assert (chat.kind, chat.provider, chat.context_window) == ("chat", "demo", 8192)
    assert chat.test_mode_allowed and chat.enabled and chat.response_cache_ttl == 0
    embed = AIModel.objects.get(name="demo-embed")
    assert (embed.kind, embed.provider, embed.embedding_dimensions) == ("embeddings", "demo", 256)
    assert (chat.price.input_per_million, chat.price.output_per_million) == (
        Decimal("0.5"),
        Decimal("1.5"),
    )
    assert embed.price.input_per_million == Decimal("0.02")
    for model in (chat, embed):
        model.full_clean()
        model.price.full_clean()


def test_the_seeded_models_are_served_at_once():
    registry.model_specs()  # warm and empty
    run("--no-demo", "--demo-models")
    assert [spec.name for spec in registry.model_specs()] == ["demo-chat", "demo-embed"]
    assert pricing.cost_for(model="demo-chat", input_tokens=10**6, output_tokens=0) == Decimal(
        "0.5"
    )


def test_bootstrap_twice_changes_nothing():
    run("--no-demo", "--demo-models")
    before = list(AIModel.objects.values()), list(ModelPrice.objects.values())

    output = run("--no-demo", "--demo-models")

    assert "Demo models: 0 created, 2 already present" in output
    assert (list(AIModel.objects.values()), list(ModelPrice.objects.values())) == before


def test_seeding_never_overwrites_operator_edits():
    model_seed_demo()
    AIModel.objects.filter(name="demo-chat").update(context_window=2048, enabled=False)
    ModelPrice.objects.filter(model__name="demo-chat").update(input_per_million=Decimal("9"))

    assert model_seed_demo() == 0

    chat = AIModel.objects.get(name="demo-chat")
    assert (chat.context_window, chat.enabled) == (2048, False)
    assert chat.price.input_per_million == Decimal("9")


def test_seeding_puts_back_a_missing_model_or_price():
    model_seed_demo()
    AIModel.objects.filter(name="demo-embed").delete()
    ModelPrice.objects.filter(model__name="demo-chat").delete()

    assert model_seed_demo() == 1

    assert set(AIModel.objects.values_list("name", flat=True)) == {m["name"] for m in DEMO_MODELS}
    assert ModelPrice.objects.count() == 2


def test_bootstrap_no_demo_seeds_no_models_or_prices():
    output = run("--no-demo")

    assert "Demo models" not in output
    assert not AIModel.objects.exists()
    assert not ModelPrice.objects.exists()


def test_default_bootstrap_still_seeds_the_demo_models():
    output = run()

    assert "Demo models: 2 created, 0 already present" in output
    assert set(AIModel.objects.values_list("name", flat=True)) == {"demo-chat", "demo-embed"}
