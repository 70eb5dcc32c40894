"""Adding a model server's model (`manage.py add_model`) and the admin's "Test connection",
against the project's fake upstream (aibaas/bench/fake_upstream.py) in a real HTTP server."""

from decimal import Decimal
from io import StringIO

import openai
import pytest
from django.core.management import CommandError, call_command

from accounts.actors import Actor
from aibaas.bench import fake_upstream
from aibaas.gateway import registry
from aibaas.gateway.models import AIModel, ModelKind, ProviderKind
from billing.models import ModelPrice
from keys import touch
from keys.services import api_key_create
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory
from tests.gateway.asgi_client import BASE, SyncAsgiTransport
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


def add_model(*args: str) -> str:
    out = StringIO()
    call_command("add_model", *args, stdout=out)
    return out.getvalue()


def vllm_args(base_url: str, name: str = "llama-3-8b", model: str = "fake") -> list[str]:
    return [
        name,
        f"--base-url={base_url}",
        f"--upstream-model={model}",
        "--api-key-env=FAKE_UPSTREAM_KEY",
        "--input-price=0.20",
        "--output-price=0.60",
        "--cached-input-price=0.10",
    ]


def sdk(raw_key: str) -> openai.OpenAI:
    import httpx

    http = httpx.Client(base_url=BASE, transport=SyncAsgiTransport(), timeout=30)
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=raw_key, max_retries=0, http_client=http)


def a_key() -> str:
    organization = MembershipFactory().organization
    return api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="sdk"
    ).raw_key


def test_add_model_then_the_openai_sdk_calls_it_through_the_upstream(upstream, monkeypatch):
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    registry.model_spec("llama-3-8b")  # a snapshot taken before: add_model must reload it
    out = add_model(*vllm_args(upstream.base_url))
    assert out.strip() == f"llama-3-8b: added (fake @ {upstream.base_url})"

    model = AIModel.objects.get(name="llama-3-8b")
    assert (model.kind, model.provider) == (ModelKind.CHAT, ProviderKind.OPENAI_COMPATIBLE)
    (up,) = model.upstreams.all()
    assert (up.base_url, up.upstream_model, up.api_key_env, up.enabled) == (
        upstream.base_url,
        "fake",
        "FAKE_UPSTREAM_KEY",
        True,
    )
    assert (model.price.input_per_million, model.price.output_per_million) == (
        Decimal("0.2"),
        Decimal("0.6"),
    )
    assert model.price.cached_input_per_million == Decimal("0.1")

    client = sdk(a_key())
    assert "llama-3-8b" in {m.id for m in client.models.list()}
    completion = client.chat.completions.create(
        model="llama-3-8b", messages=[{"role": "user", "content": "Hello"}]
    )
    assert completion.model == "llama-3-8b"
    assert completion.choices[0].message.content == fake_upstream._REPLY
    event = UsageEvent.objects.get(model="llama-3-8b")
    assert event.status_code == 200 and event.cost > 0  # priced by the price it added


def test_add_model_for_an_embeddings_server(upstream):
    add_model(
        "bge-small",
        "--kind=embeddings",
        f"--base-url={upstream.base_url}",
        "--upstream-model=fake",
        "--input-price=0.01",
    )
    vectors = sdk(a_key()).embeddings.create(model="bge-small", input=["a", "b"])
    assert len(vectors.data) == 2
    assert ModelPrice.objects.get(model__name="bge-small").output_per_million == 0


def test_the_same_add_model_again_changes_nothing(upstream):
    add_model(*vllm_args(upstream.base_url))
    before = AIModel.objects.get(name="llama-3-8b").updated_at
    out = add_model(*vllm_args(upstream.base_url))
    assert out.strip() == f"llama-3-8b: already present, unchanged (fake @ {upstream.base_url})"
    assert AIModel.objects.get(name="llama-3-8b").updated_at == before
    assert AIModel.objects.get(name="llama-3-8b").upstreams.count() == 1


def test_add_model_refuses_to_overwrite_a_model_with_other_settings(upstream):
    add_model(*vllm_args(upstream.base_url))
    args = vllm_args(upstream.base_url)
    args[-2] = "--output-price=0.90"
    with pytest.raises(CommandError) as error:
        add_model(*args)
    assert str(error.value) == (
        "A model named 'llama-3-8b' already exists with other settings (output_per_million); "
        "change it in Django admin (Gateway > AI models) or choose another name."
    )
    AIModelFactory(name="demo-chat")  # a demo model: not add_model's kind of model
    with pytest.raises(CommandError, match="provider, upstreams or price"):
        add_model(*vllm_args(upstream.base_url, name="demo-chat"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--base-url=ftp://gpu-box/v1",), "base_url: The URL must start with http://"),
        (("--base-url=http://user:pw@gpu:8000/v1",), "base_url: Do not put credentials"),
        (("--api-key-env=sk-proj-abc123",), "api_key_env: This looks like an API key."),
        (("--api-key-env=1BAD",), "api_key_env: Enter an environment variable name"),
        (("bad name",), "name: Letters, digits"),
    ],
)
def test_bad_input_is_a_one_line_command_error_and_adds_nothing(change, message):
    args = vllm_args("http://gpu-box:8000/v1")
    for item in change:
        if item.startswith("--"):
            flag = item.split("=", 1)[0]
            args = [a for a in args if not a.startswith(flag + "=")] + [item]
        else:
            args[0] = item
    with pytest.raises(CommandError) as error:
        add_model(*args)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)
    assert not AIModel.objects.exists() and not ModelPrice.objects.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["m", "--upstream-model=x", "--input-price=1"],  # no --base-url
        ["m", "--base-url=http://h/v1", "--upstream-model=x", "--input-price=-1"],
        ["m", "--base-url=http://h/v1", "--upstream-model=x", "--input-price=free"],
        ["m", "--base-url=http://h/v1", "--upstream-model=x", "--input-price=NaN"],
        ["m", "--kind=images", "--base-url=http://h/v1", "--upstream-model=x", "--input-price=1"],
    ],
)
def test_bad_arguments_are_refused_by_the_parser(args):
    with pytest.raises(CommandError):
        add_model(*args)
    assert not AIModel.objects.exists()


# --- the admin's "Test connection" ------------------------------------------------------------


def run_test_connection(operator, name: str):
    response = operator.post(
        "/admin/gateway/aimodel/",
        {
            "action": "test_connection",
            "_selected_action": [AIModel.objects.get(name=name).pk],
        },
        follow=True,
    )
    assert response.status_code == 200
    return [(m.level_tag, m.message) for m in response.context["messages"]]


def test_connection_to_a_working_upstream_lists_its_models(operator, upstream, monkeypatch):
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    add_model(*vllm_args(upstream.base_url))
    ((level, message),) = run_test_connection(operator, "llama-3-8b")
    assert level == "success", message
    assert message.startswith(f"llama-3-8b → fake @ {upstream.base_url}: OK: GET /models: HTTP 200")
    assert "models: fake, fake-no-usage, fake-slow" in message
    assert "POST /chat/completions: HTTP 200" in message and "a completion came back" in message
    assert "sk-upstream-secret" not in message


def test_connection_to_an_embeddings_upstream_asks_for_one_embedding(operator, upstream):
    add_model(
        "e",
        "--kind=embeddings",
        f"--base-url={upstream.base_url}",
        "--upstream-model=fake",
        "--input-price=0",
    )
    ((level, message),) = run_test_connection(operator, "e")
    assert level == "success" and "POST /embeddings: HTTP 200" in message, message


def test_connection_to_a_down_upstream_says_it_cannot_connect(operator):
    add_model(*vllm_args(f"http://127.0.0.1:{free_port()}/v1"))
    ((level, message),) = run_test_connection(operator, "llama-3-8b")
    assert level == "error"
    assert "FAILED: GET /models: no answer in" in message
    assert message.count("cannot connect") == 2


def test_connection_with_a_rejected_key_reports_the_401_without_the_key(
    operator, upstream, monkeypatch, caplog
):
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", fake_upstream.REJECTED_KEY)
    add_model(*vllm_args(upstream.base_url))
    ((level, message),) = run_test_connection(operator, "llama-3-8b")
    assert level == "error"
    assert "GET /models: HTTP 401" in message and "POST /chat/completions: HTTP 401" in message
    assert "Incorrect API key provided: [upstream key]" in message
    assert fake_upstream.REJECTED_KEY not in message
    assert fake_upstream.REJECTED_KEY not in caplog.text


def test_connection_to_a_hung_upstream_times_out_quickly(operator, upstream, monkeypatch):
    from aibaas.gateway.providers.openai_compatible import probe

    monkeypatch.setattr(probe, "PROBE_TIMEOUT", 0.5)
    add_model(*vllm_args(upstream.base_url, model="fake-hang"))
    ((level, message),) = run_test_connection(operator, "llama-3-8b")
    assert level == "error"
    assert "GET /models: HTTP 200" in message  # the server is up...
    assert "POST /chat/completions: no answer in" in message  # ...its model does not answer
    assert "timed out after 0.5 s" in message


def test_connection_of_a_demo_model_says_there_is_nothing_to_test(operator):
    AIModelFactory(name="demo-chat")
    assert run_test_connection(operator, "demo-chat") == [
        ("info", "demo-chat: no upstream to test (built in).")
    ]
