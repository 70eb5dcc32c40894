"""The registry models' rules and the operators' admin for models, upstreams and prices."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from aibaas.gateway import registry
from aibaas.gateway.models import (
    AIModel,
    ModelKind,
    ProviderKind,
    Upstream,
    check_upstream_set,
    validate_env_var_name,
    validate_upstream_url,
)
from billing import pricing
from billing.models import ModelPrice
from tests.factories import AIModelFactory, ModelPriceFactory, UpstreamFactory

pytestmark = pytest.mark.django_db


# --- field validators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8001/v1",
        "https://api.openai.com/v1",
        "http://vllm:8000/v1",  # a Docker service name: no dot in the host
        "http://localhost:11434/v1/",
        "http://[::1]:8080/v1",
    ],
)
def test_upstream_url_accepts_http_and_https_urls(url):
    validate_upstream_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/v1",
        "file:///etc/passwd",
        "example.com/v1",
        "http://",
        "http:///v1",
        "http://user:secret@example.com/v1",
        "http://example.com/v1?key=abc",
        "http://example.com/v1#frag",
        "http://exa mple.com/v1",
        "http://example.com:99999/v1",
    ],
)
def test_upstream_url_rejects_other_schemes_credentials_and_junk(url):
    with pytest.raises(ValidationError):
        validate_upstream_url(url)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "VLLM_KEY_2", "_PRIVATE", "lower_case"])
def test_api_key_env_accepts_environment_variable_names(name):
    validate_env_var_name(name)


@pytest.mark.parametrize(
    "value",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",  # a pasted OpenAI key
        "sk_live_abcdef",
        "hf_abcdefghijkl",
        "2FAST",
        "MY-KEY",
        "MY KEY",
        "$OPENAI_API_KEY",
    ],
)
def test_api_key_env_rejects_secrets_and_non_names(value):
    with pytest.raises(ValidationError):
        validate_env_var_name(value)


def test_a_pasted_secret_gets_a_message_that_says_to_use_an_env_var():
    with pytest.raises(ValidationError) as error:
        validate_env_var_name("sk-abc123")
    assert "environment variable" in error.value.messages[0]


# --- clean() -----------------------------------------------------------------------------------


def test_only_embeddings_models_have_dimensions():
    model = AIModel(name="chat", kind=ModelKind.CHAT, embedding_dimensions=256)
    with pytest.raises(ValidationError) as error:
        model.full_clean()
    assert "embedding_dimensions" in error.value.message_dict


def test_only_demo_models_allow_test_mode_keys():
    model = AIModel(name="paid", provider=ProviderKind.OPENAI_COMPATIBLE, test_mode_allowed=True)
    with pytest.raises(ValidationError) as error:
        model.full_clean()
    assert "test_mode_allowed" in error.value.message_dict


@pytest.mark.parametrize("name", ["demo chat", "-leading-dash", "", "a" * 201, "name?"])
def test_model_names_are_url_and_header_safe(name):
    with pytest.raises(ValidationError) as error:
        AIModel(name=name, provider=ProviderKind.DEMO).full_clean()
    assert "name" in error.value.message_dict


@pytest.mark.parametrize("name", ["demo-chat", "meta-llama/Llama-3.1-8B", "llama3:8b", "gpt-4o"])
def test_usual_model_names_are_valid(name):
    AIModel(name=name, provider=ProviderKind.DEMO).full_clean()


def test_an_upstream_of_a_demo_model_is_invalid():
    demo = AIModelFactory(provider=ProviderKind.DEMO)
    upstream = Upstream(model=demo, base_url="http://x:1/v1", upstream_model="m", weight=1)
    with pytest.raises(ValidationError):
        upstream.full_clean()


@pytest.mark.parametrize(
    ("field", "value"),
    [("weight", 0), ("timeout_seconds", 0), ("connect_timeout_seconds", 0)],
)
def test_upstream_numbers_must_be_positive(field, value):
    upstream = UpstreamFactory.build(model=AIModelFactory(provider=ProviderKind.OPENAI_COMPATIBLE))
    setattr(upstream, field, value)
    with pytest.raises(ValidationError) as error:
        upstream.full_clean()
    assert field in error.value.message_dict


def test_upstream_set_rules():
    demo = AIModel(provider=ProviderKind.DEMO, enabled=True)
    remote = AIModel(provider=ProviderKind.OPENAI_COMPATIBLE, enabled=True)
    parked = AIModel(provider=ProviderKind.OPENAI_COMPATIBLE, enabled=False)

    check_upstream_set(model=demo, enabled_flags=[])
    check_upstream_set(model=remote, enabled_flags=[False, True])
    check_upstream_set(model=parked, enabled_flags=[])  # disabled: may wait for upstreams
    with pytest.raises(ValidationError):
        check_upstream_set(model=demo, enabled_flags=[True])
    with pytest.raises(ValidationError):
        check_upstream_set(model=remote, enabled_flags=[])
    with pytest.raises(ValidationError):
        check_upstream_set(model=remote, enabled_flags=[False])


def test_price_is_one_per_model_and_deleting_the_model_deletes_it():
    price = ModelPriceFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelPrice.objects.create(model=price.model, input_per_million=1, output_per_million=1)
    price.model.delete()
    assert not ModelPrice.objects.exists()


def test_prices_keep_eight_decimal_places():
    # (SQLite stores decimals as REAL: 15 significant digits is what it keeps exactly.)
    price = ModelPriceFactory(
        input_per_million=Decimal("0.00000001"), output_per_million=Decimal("12345.12345678")
    )
    price.refresh_from_db()
    assert price.input_per_million == Decimal("0.00000001")
    assert price.output_per_million == Decimal("12345.12345678")
    assert str(price).endswith("$0.00000001/M in, $12345.12345678/M out")


# --- admin -------------------------------------------------------------------------------------


def model_form(**fields) -> dict:
    """The POST data of the AIModel admin form, with no inline rows unless given."""
    data = {
        "name": "llama",
        "kind": "chat",
        "provider": "openai_compatible",
        "enabled": "on",
        "description": "",
        "context_window": "8192",
        "response_cache_ttl": "0",
        "embedding_dimensions": "",
        "upstreams-TOTAL_FORMS": "0",
        "upstreams-INITIAL_FORMS": "0",
        "upstreams-MIN_NUM_FORMS": "0",
        "upstreams-MAX_NUM_FORMS": "1000",
        "price-TOTAL_FORMS": "0",
        "price-INITIAL_FORMS": "0",
        "price-MIN_NUM_FORMS": "0",
        "price-MAX_NUM_FORMS": "1",
        "_save": "Save",
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def upstream_row(index: int, **fields) -> dict:
    row = {
        "base_url": "http://127.0.0.1:8001/v1",
        "upstream_model": "meta-llama/Llama-3.1-8B-Instruct",
        "api_key_env": "VLLM_API_KEY",
        "weight": "1",
        "timeout_seconds": "60",
        "connect_timeout_seconds": "5",
        "enabled": "on",
    }
    row.update(fields)
    return {f"upstreams-{index}-{k}": v for k, v in row.items() if v is not None}


def test_admin_changelist_shows_models_with_upstreams_and_prices(operator):
    demo = AIModelFactory(name="demo-chat")
    ModelPriceFactory(model=demo, input_per_million=Decimal("0.5"))
    UpstreamFactory(model__name="remote-llama")

    response = operator.get("/admin/gateway/aimodel/")

    assert response.status_code == 200
    body = response.content.decode()
    assert "demo-chat" in body and "remote-llama" in body
    assert "built in" in body and "1 (1)" in body
    assert "0.5" in body


@pytest.mark.parametrize(
    "query", ["?q=llama", "?provider__exact=demo", "?kind__exact=embeddings", "?enabled__exact=0"]
)
def test_admin_changelist_filters_and_search(operator, query):
    UpstreamFactory(model__name="remote-llama")
    assert operator.get(f"/admin/gateway/aimodel/{query}").status_code == 200


def test_admin_change_page_shows_the_upstream_and_price_inlines(operator):
    upstream = UpstreamFactory(api_key_env="GATEWAY_TEST_UNSET_VARIABLE")
    ModelPriceFactory(model=upstream.model)

    response = operator.get(f"/admin/gateway/aimodel/{upstream.model.pk}/change/")

    assert response.status_code == 200
    body = response.content.decode()
    assert "upstreams-TOTAL_FORMS" in body and "price-TOTAL_FORMS" in body
    assert upstream.base_url in body
    assert "GATEWAY_TEST_UNSET_VARIABLE" in body


def test_admin_add_page_opens(operator):
    assert operator.get("/admin/gateway/aimodel/add/").status_code == 200


def test_admin_adds_a_model_with_an_upstream_and_a_price(operator):
    data = model_form(**upstream_row(0))
    data.update(
        {
            "upstreams-TOTAL_FORMS": "1",
            "price-TOTAL_FORMS": "1",
            "price-0-input_per_million": "0.25",
            "price-0-output_per_million": "0.75",
        }
    )
    registry.model_specs()  # a warm snapshot, which the save must invalidate

    response = operator.post("/admin/gateway/aimodel/add/", data)

    assert response.status_code == 302, response.content.decode()[:2000]
    spec = registry.model_spec("llama")
    assert spec is not None
    assert spec.upstreams[0].upstream_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert spec.upstreams[0].api_key_env == "VLLM_API_KEY"
    assert pricing.cost_for(model="llama", input_tokens=1_000_000, output_tokens=0) == Decimal(
        "0.25"
    )


def test_admin_refuses_an_upstream_on_a_demo_model(operator):
    data = model_form(provider="demo", **upstream_row(0))
    data["upstreams-TOTAL_FORMS"] = "1"

    response = operator.post("/admin/gateway/aimodel/add/", data)

    assert response.status_code == 200
    assert "takes no upstreams" in response.content.decode()
    assert not AIModel.objects.exists()


def test_admin_refuses_an_enabled_remote_model_without_an_enabled_upstream(operator):
    data = model_form(**upstream_row(0, enabled=None))
    data["upstreams-TOTAL_FORMS"] = "1"

    response = operator.post("/admin/gateway/aimodel/add/", data)

    assert response.status_code == 200
    assert "at least one enabled upstream" in response.content.decode()
    assert not AIModel.objects.exists()


def test_admin_refuses_a_pasted_key_in_the_env_var_field(operator):
    data = model_form(**upstream_row(0, api_key_env="sk-proj-abc123"))
    data["upstreams-TOTAL_FORMS"] = "1"

    response = operator.post("/admin/gateway/aimodel/add/", data)

    assert response.status_code == 200
    assert "looks like an API key" in response.content.decode()
    assert not Upstream.objects.exists()


def test_admin_edit_invalidates_the_registry_at_once(operator):
    model = AIModelFactory(name="demo-x", context_window=1000)
    assert registry.model_spec("demo-x").context_window == 1000

    response = operator.post(
        f"/admin/gateway/aimodel/{model.pk}/change/",
        model_form(name="demo-x", provider="demo", context_window="2000"),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert registry.model_spec("demo-x").context_window == 2000


def test_admin_delete_invalidates_the_registry(operator):
    model = AIModelFactory(name="doomed")
    assert registry.model_spec("doomed") is not None

    response = operator.post(f"/admin/gateway/aimodel/{model.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert registry.model_spec("doomed") is None


def test_model_price_admin_pages_and_edit_invalidate_prices(operator):
    price = ModelPriceFactory(model__name="priced", input_per_million=Decimal("1"))
    assert pricing.cost_for(model="priced", input_tokens=1_000_000, output_tokens=0) == 1

    assert operator.get("/admin/billing/modelprice/").status_code == 200
    assert operator.get("/admin/billing/modelprice/?q=priced").status_code == 200
    assert operator.get(f"/admin/billing/modelprice/{price.pk}/change/").status_code == 200
    response = operator.post(
        f"/admin/billing/modelprice/{price.pk}/change/",
        {
            "model": price.model.pk,
            "input_per_million": "3",
            "output_per_million": "2",
            "cached_input_per_million": "",
            "_save": "Save",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert pricing.cost_for(model="priced", input_tokens=1_000_000, output_tokens=0) == 3


def test_model_price_admin_refuses_negative_prices(operator):
    model = AIModelFactory()
    response = operator.post(
        "/admin/billing/modelprice/add/",
        {"model": model.pk, "input_per_million": "-1", "output_per_million": "1"},
    )
    assert response.status_code == 200
    assert not ModelPrice.objects.exists()


def test_admin_switches_a_remote_model_to_demo_while_deleting_its_upstreams(operator):
    upstream = UpstreamFactory(model__name="was-remote")
    model = upstream.model
    data = model_form(name="was-remote", provider="demo", **upstream_row(0))
    data.update(
        {
            "upstreams-TOTAL_FORMS": "1",
            "upstreams-INITIAL_FORMS": "1",
            "upstreams-0-id": str(upstream.pk),
            "upstreams-0-model": str(model.pk),
            "upstreams-0-DELETE": "on",
        }
    )

    response = operator.post(f"/admin/gateway/aimodel/{model.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    model.refresh_from_db()
    assert model.provider == "demo" and not model.upstreams.exists()
    assert registry.model_spec("was-remote").upstreams == ()
