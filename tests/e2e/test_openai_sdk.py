"""The official `openai` package against a running aibaas.

- The demo models on the production ASGI application, in every test mode: in this process
  (tests/gateway/asgi_client.py, on the test database) and, on PostgreSQL and Redis, on a
  `uvicorn aibaas.asgi:application` process.
- A model backed by the local fake upstream (aibaas/bench/fake_upstream.py) on real uvicorn
  processes (ASGI, as in production): streaming passthrough, fallback, 504, a client hanging up
  mid-stream. Those share the test database with the server process: PostgreSQL only.
"""

import time
from decimal import Decimal

import httpx
import openai
import pytest

from accounts.actors import Actor
from aibaas.bench import fake_upstream
from aibaas.gateway.models import ModelKind, ProviderKind
from keys import touch
from keys.services import api_key_create
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory, UpstreamFactory
from tests.gateway.asgi_client import BASE, SyncAsgiTransport
from tests.servers import free_port, server_process

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Tell me about foxes."}]


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture
def issued(db):
    organization = MembershipFactory().organization
    return api_key_create(
        organization=organization,
        actor=Actor.for_system("tests"),
        name="sdk",
        scopes=["inference", "usage:read"],
    )


@pytest.fixture
def demo_models(db):
    chat = AIModelFactory(name="demo-chat", test_mode_allowed=True)
    embed = AIModelFactory(name="demo-embed", kind=ModelKind.EMBEDDINGS, test_mode_allowed=True)
    ModelPriceFactory(
        model=chat, input_per_million=Decimal("1.00"), output_per_million=Decimal("2.00")
    )
    ModelPriceFactory(model=embed, input_per_million=Decimal("0.10"), output_per_million=0)


class Served:
    """Where aibaas answers, and how to reach it: `http()` is an httpx client for it."""

    def __init__(self, url: str, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self.transport = transport

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, transport=self.transport, timeout=30)

    def sdk(self, api_key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, http_client=self.http()
        )


@pytest.fixture(
    params=[
        "in-process",
        pytest.param("uvicorn", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def served(request, demo_models):
    """aibaas.asgi.application in this process (every test mode), or a
    `uvicorn aibaas.asgi:application` process (PostgreSQL + Redis)."""
    if request.param == "in-process":
        yield Served(BASE, SyncAsgiTransport())
        return
    with server_process() as base:
        yield Served(base)


@pytest.fixture
def sdk(served, issued):
    client = served.sdk(issued.raw_key)
    yield client
    client.close()


def test_the_openai_sdk_works_unchanged_against_the_demo_models(sdk, served):
    assert {m.id for m in sdk.models.list()} == {"demo-chat", "demo-embed"}
    assert sdk.models.retrieve("demo-embed").id == "demo-embed"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-17")
    assert missing.value.code == "model_not_found"

    completion = sdk.chat.completions.create(model="demo-chat", messages=HELLO)
    assert "fox" in completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 0

    stream = sdk.chat.completions.create(
        model="demo-chat", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "fox" in "".join(parts)
    assert usage is not None and usage.completion_tokens == len([p for p in parts if p])

    embeddings = sdk.embeddings.create(model="demo-embed", input=["a fox", "a dog"])
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) > 0

    with pytest.raises(openai.BadRequestError) as bad_request:
        sdk.chat.completions.create(model="demo-chat", messages=[{"role": "robot", "content": ""}])
    assert bad_request.value.param == "messages[0].role"

    with served.sdk("sk_live_wrong") as bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.code == "invalid_api_key"


def test_usage_api_equals_the_sum_of_what_the_responses_reported(sdk, served, issued):
    prompt = completion = 0
    for i in range(5):
        if i % 2:
            stream = sdk.chat.completions.create(
                model="demo-chat",
                messages=[{"role": "user", "content": f"streams number {i}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = [c.usage for c in stream if c.usage is not None][-1]
        else:
            usage = sdk.chat.completions.create(
                model="demo-chat", messages=[{"role": "user", "content": f"question {i}"}]
            ).usage
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
    embed = sdk.embeddings.create(model="demo-embed", input="fox").usage.prompt_tokens
    # Usage events are written after the reply is sent (on uvicorn): the last may lag a little.
    _wait_for_events(issued, 6)
    with served.http() as http:
        response = http.get("/v1/usage", headers={"Authorization": f"Bearer {issued.raw_key}"})
    totals = response.json()["totals"]
    assert totals["requests"] == 6
    assert (totals["input_tokens"], totals["output_tokens"]) == (prompt + embed, completion)
    cost = (Decimal(prompt) * 1 + Decimal(completion) * 2 + Decimal(embed) * Decimal("0.1")) / 10**6
    assert Decimal(totals["cost"]) == cost


# --- a model behind the fake upstream, on real ASGI server processes ---------------------------


DOWN = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def upstream_model(name: str, *upstreams: tuple[str, str, float, int]):
    model = AIModelFactory(name=name, provider=ProviderKind.OPENAI_COMPATIBLE)
    for base_url, upstream_name, timeout, weight in upstreams:
        UpstreamFactory(
            model=model,
            base_url=base_url,
            upstream_model=upstream_name,
            api_key_env="",
            timeout_seconds=timeout,
            connect_timeout_seconds=1.0,
            weight=weight,
        )
    ModelPriceFactory(
        model=model, input_per_million=Decimal("3.00"), output_per_million=Decimal("6.00")
    )
    return model


@pytest.mark.postgres
@pytest.mark.redis
def test_upstream_models_stream_fall_back_and_time_out_through_aibaas(upstream, issued):
    upstream_model("relay", (upstream.base_url, "fake", 5.0, 1))
    upstream_model("fallback", (DOWN, "fake", 5.0, 1000), (upstream.base_url, "fake", 5.0, 1))
    upstream_model("hung", (upstream.base_url, "fake-hang", 0.5, 1))
    with server_process() as base:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=issued.raw_key, max_retries=0)

        stream = sdk.chat.completions.create(
            model="relay", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "The quick brown fox jumps over the lazy dog."
        assert all(c.model == "relay" for c in chunks)
        assert chunks[-1].usage.prompt_tokens == 12

        answer = sdk.chat.completions.create(model="fallback", messages=HELLO)
        assert answer.choices[0].message.content.startswith("The quick brown fox")
        assert answer.usage.completion_tokens == 10

        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="hung", messages=HELLO)
        assert caught.value.status_code == 504
        assert caught.value.code == "upstream_timeout"
        assert time.monotonic() - started < 5

        events = _wait_for_events(issued, 3)
        by_model = {e.model: e for e in events}
        assert by_model["relay"].status_code == 200
        assert (by_model["relay"].input_tokens, by_model["relay"].output_tokens) == (12, 9)
        assert by_model["fallback"].cost == (12 * Decimal(3) + 10 * Decimal(6)) / 10**6
        assert by_model["hung"].status_code == 504 and by_model["hung"].input_tokens == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_a_client_hanging_up_mid_stream_still_leaves_a_usage_event(upstream, issued):
    upstream_model("slow", (upstream.base_url, "fake-slow", 10.0, 1))
    with server_process() as base:
        body = {"model": "slow", "messages": HELLO, "stream": True}
        headers = {"Authorization": f"Bearer {issued.raw_key}"}
        received = 0
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r,
        ):
            assert r.status_code == 200
            request_id = r.headers["X-Request-ID"]
            for line in r.iter_lines():
                if line.startswith("data: "):
                    received += 1
                if received >= 4:  # the role chunk and three tokens
                    break
        (event,) = _wait_for_events(issued, 1)
        assert event.request_id == request_id
        assert event.status_code == 499  # client closed the request
        # Billed for what was produced before the hang-up (estimated: no upstream usage came).
        assert 0 < event.output_tokens < 2 * fake_upstream.STREAM_TOKENS
        assert event.input_tokens > 0 and event.estimated


def _wait_for_events(issued, count: int, timeout: float = 10.0) -> list[UsageEvent]:
    deadline = time.monotonic() + timeout
    while True:
        events = list(UsageEvent.objects.filter(api_key_id=issued.api_key.pk))
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)
