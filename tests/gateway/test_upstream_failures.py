"""A failing or misbehaving upstream model server, end to end: what the customer gets from
/v1/chat/completions (the production ASGI application, aibaas.asgi) and the usage event that is
recorded. The upstream is the local fake (aibaas/bench/fake_upstream.py) on a real socket.

Transactional: a cold key is verified in a worker thread, which sees committed rows only.
"""

import json
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import async_to_sync

from accounts.actors import Actor
from aibaas.bench import fake_upstream
from aibaas.gateway import streaming
from aibaas.gateway.models import ProviderKind
from aibaas.gateway.providers import openai_compatible as oc
from aibaas.gateway.providers.base import ModelSpec, ProviderError
from aibaas.gateway.tokenizer import count_chat_tokens, count_tokens
from keys import touch, verification
from keys.services import api_key_create
from metering.models import UsageEvent
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory, UpstreamFactory

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Tell me about foxes."}]
REPLY = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(autouse=True)
def _fresh_state():
    verification.clear_local()
    touch.reset()
    oc._unhealthy_until.clear()
    yield
    touch.flush()
    verification.clear_local()
    touch.reset()
    oc._unhealthy_until.clear()


@pytest.fixture(scope="module", autouse=True)
def _close_touch_writer_connection(django_db_blocker):
    yield
    with django_db_blocker.unblock():
        touch.flush()
        touch.close_connections()


@pytest.fixture
def raw_key(db) -> str:
    organization = MembershipFactory().organization
    return api_key_create(
        organization=organization, actor=Actor.for_system("tests"), name="upstream failures"
    ).raw_key


def upstream_model(upstream, upstream_name: str) -> str:
    """A public model `<upstream_name>-model` served by the fake upstream's `upstream_name`."""
    model = AIModelFactory(name=f"{upstream_name}-model", provider=ProviderKind.OPENAI_COMPATIBLE)
    UpstreamFactory(
        model=model,
        base_url=upstream.base_url,
        upstream_model=upstream_name,
        api_key_env="",
        timeout_seconds=5.0,
        connect_timeout_seconds=1.0,
    )
    ModelPriceFactory(
        model=model, input_per_million=Decimal("3.00"), output_per_million=Decimal("6.00")
    )
    return model.name


def post_chat(raw_key: str, body: dict) -> tuple[int, httpx.Headers, bytes]:
    """POST /v1/chat/completions through aibaas.asgi.application, read to the end, with the
    usage event written and the upstream connections of this event loop closed."""
    from aibaas.asgi import application

    async def run():
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 50000))
        headers = {"Authorization": f"Bearer {raw_key}"}
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
                client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
            ):
                content = b"".join([chunk async for chunk in r.aiter_raw()])
            await streaming.drain_background()
            return r.status_code, r.headers, content
        finally:
            await oc.close_sessions()

    return async_to_sync(run)()


def events(content: bytes) -> list:
    """The data of each SSE event: parsed JSON, or b"[DONE]"."""
    data = [e[6:] for e in content.split(b"\n\n") if e.startswith(b"data: ")]
    return [d if d == b"[DONE]" else json.loads(d) for d in data]


def streamed_text(payloads: list) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for p in payloads
        if isinstance(p, dict)
        for choice in p.get("choices", [])
    )


@pytest.mark.parametrize("answer", ["fake-json-stream", "fake-html-stream"])
def test_stream_answered_without_an_event_stream_is_a_json_502_recorded_as_502(
    upstream, raw_key, answer
):
    model = upstream_model(upstream, answer)
    status, headers, content = post_chat(
        raw_key, {"model": model, "messages": HELLO, "stream": True}
    )
    assert status == 502
    assert headers["content-type"] == "application/json"
    assert json.loads(content)["error"] == {
        "type": "api_error",
        "code": "upstream_error",
        "message": oc.NOT_AN_EVENT_STREAM,
        "param": None,
    }
    event = UsageEvent.objects.get()
    assert (event.status_code, event.input_tokens, event.output_tokens) == (502, 0, 0)


def test_stream_closed_without_done_ends_with_one_error_event_and_records_502_with_tokens_sent(
    upstream, raw_key
):
    model = upstream_model(upstream, "fake-no-done")
    status, _, content = post_chat(raw_key, {"model": model, "messages": HELLO, "stream": True})
    assert status == 200
    payloads = events(content)
    assert b"[DONE]" not in payloads
    assert [p for p in payloads if "error" in p] == [payloads[-1]]
    assert payloads[-1]["error"]["code"] == "upstream_error"
    assert payloads[-1]["error"]["message"] == oc.STREAM_CUT_SHORT
    assert streamed_text(payloads) == REPLY
    event = UsageEvent.objects.get()
    assert event.status_code == 502 and event.estimated
    assert (event.input_tokens, event.output_tokens) == (
        count_chat_tokens(HELLO),
        count_tokens(REPLY),
    )
    assert event.cost > 0


def test_upstream_error_event_mid_stream_ends_with_our_error_event_only(upstream, raw_key):
    model = upstream_model(upstream, "fake-error-mid-stream")
    status, _, content = post_chat(raw_key, {"model": model, "messages": HELLO, "stream": True})
    assert status == 200
    assert fake_upstream.UPSTREAM_SECRET.encode() not in content
    payloads = events(content)
    assert [p for p in payloads if "error" in p] == [payloads[-1]]
    assert payloads[-1]["error"]["message"] == oc.STREAM_FAILED
    assert streamed_text(payloads) == "Hi"
    event = UsageEvent.objects.get()
    assert (event.status_code, event.output_tokens) == (502, count_tokens("Hi"))


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("status", [401, 403, 404, 429, 502, 503])
def test_operator_side_upstream_error_is_a_generic_502_recorded_as_502(
    upstream, raw_key, status, stream
):
    model = upstream_model(upstream, f"fake-{status}")
    answered, headers, content = post_chat(
        raw_key, {"model": model, "messages": HELLO, "stream": stream}
    )
    assert answered == 502
    assert headers["content-type"] == "application/json"
    assert json.loads(content)["error"] == {
        "type": "api_error",
        "code": "upstream_error",
        "message": f"The model server answered HTTP {status}; the operator has been notified.",
        "param": None,
    }
    assert fake_upstream.UPSTREAM_SECRET.encode() not in content
    assert "x-upstream-org" not in headers
    assert UsageEvent.objects.get().status_code == 502


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("status", [413, 422])
def test_customer_side_upstream_error_is_a_400_with_its_message_and_param(
    upstream, raw_key, status, stream
):
    model = upstream_model(upstream, f"fake-{status}")
    answered, _, content = post_chat(raw_key, {"model": model, "messages": HELLO, "stream": stream})
    assert answered == 400
    error = json.loads(content)["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request_error",
        "messages",
    )
    assert error["message"].startswith(f"Upstream error {status} for ***")
    assert fake_upstream.UPSTREAM_SECRET not in error["message"]
    assert UsageEvent.objects.get().status_code == 400


def test_upstream_400_without_param_is_a_400_with_its_message(upstream, raw_key):
    model = upstream_model(upstream, "fake-400")
    answered, _, content = post_chat(raw_key, {"model": model, "messages": HELLO})
    assert answered == 400
    assert json.loads(content)["error"]["message"] == "max_tokens is too large"
    assert json.loads(content)["error"]["param"] is None


@pytest.mark.parametrize("kind", ["negative", "string", "float", "huge"])
def test_nonsense_upstream_usage_is_recorded_estimated_and_is_what_the_client_gets(
    upstream, raw_key, kind
):
    model = upstream_model(upstream, f"fake-{kind}-usage")
    status, headers, content = post_chat(raw_key, {"model": model, "messages": HELLO})
    assert status == 200
    answers = [(headers["x-request-id"], json.loads(content)["usage"])]
    body = {
        "model": model,
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, content = post_chat(raw_key, body)
    assert status == 200
    payloads = events(content)
    assert payloads[-1] == b"[DONE]"
    (usage,) = [p["usage"] for p in payloads[:-1] if p.get("usage") is not None]
    answers.append((headers["x-request-id"], usage))
    for request_id, client_usage in answers:
        event = UsageEvent.objects.get(request_id=request_id)
        assert event.status_code == 200 and event.estimated
        assert event.input_tokens == count_chat_tokens(HELLO)
        assert client_usage == {
            "prompt_tokens": event.input_tokens,
            "completion_tokens": event.output_tokens,
            "total_tokens": event.input_tokens + event.output_tokens,
        }


def test_stream_without_upstream_usage_sends_the_recorded_usage_chunk_before_done(
    upstream, raw_key
):
    model = upstream_model(upstream, "fake-no-usage")
    body = {
        "model": model,
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, _, content = post_chat(raw_key, body)
    assert status == 200
    payloads = events(content)
    assert payloads[-1] == b"[DONE]"
    last = payloads[-2]
    assert (last["object"], last["model"], last["choices"]) == ("chat.completion.chunk", model, [])
    assert last["id"] == payloads[0]["id"] and isinstance(last["created"], int)
    event = UsageEvent.objects.get()
    assert event.status_code == 200 and event.estimated
    assert last["usage"] == {
        "prompt_tokens": event.input_tokens,
        "completion_tokens": event.output_tokens,
        "total_tokens": event.input_tokens + event.output_tokens,
    }
    assert event.output_tokens == count_tokens(streamed_text(payloads))


class _Silent:
    """A provider whose stream ends without a single chunk."""

    async def chat_stream(self, model, body, usage):
        return
        yield


def test_a_provider_stream_without_any_chunk_is_a_502_not_an_empty_200():
    spec = ModelSpec(
        name="m",
        kind="chat",
        provider="openai_compatible",
        context_window=8192,
        test_mode_allowed=False,
        response_cache_ttl=0,
    )
    recorded = []

    async def record(status, usage, **kwargs):
        recorded.append(status)

    with pytest.raises(ProviderError) as caught:
        async_to_sync(streaming.open_stream)(_Silent(), spec, {}, record)
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert caught.value.message == streaming.EMPTY_STREAM
    assert recorded == []  # the pipeline records the 502 of the JSON answer
