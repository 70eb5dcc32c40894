"""The OpenAI-compatible provider against a real local HTTP server (the fake upstream)."""

import asyncio
import http.server
import json
import threading
import time

import pytest

from aibaas.bench import fake_upstream
from aibaas.gateway.providers import openai_compatible as oc
from aibaas.gateway.providers.base import ModelSpec, ProviderError, StreamUsage, UpstreamSpec
from aibaas.gateway.tokenizer import count_tokens
from infra.errors import ApplicationError
from tests.servers import free_port

CHAT = {"messages": [{"role": "user", "content": "Say something about foxes."}]}


@pytest.fixture(autouse=True)
def _healthy_again():
    oc._unhealthy_until.clear()
    yield
    oc._unhealthy_until.clear()


def spec(*upstreams: UpstreamSpec, name: str = "public-model") -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="chat",
        provider="openai_compatible",
        context_window=8192,
        test_mode_allowed=False,
        response_cache_ttl=0,
        upstreams=tuple(upstreams),
    )


def up(
    base_url: str,
    model: str = "fake",
    *,
    timeout: float = 5.0,
    weight: int = 1,
    api_key_env: str = "",
) -> UpstreamSpec:
    return UpstreamSpec(
        base_url=base_url,
        upstream_model=model,
        api_key_env=api_key_env,
        weight=weight,
        timeout_seconds=timeout,
        connect_timeout_seconds=1.0,
    )


DOWN = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def run(coroutine_factory):
    async def main():
        try:
            return await coroutine_factory()
        finally:
            await oc.close_sessions()

    return asyncio.run(main())


async def collect(model, body, usage, limit=None):
    chunks = []
    stream = oc.OpenAICompatibleProvider().chat_stream(model, body, usage)
    try:
        async for chunk in stream:
            chunks.append((time.monotonic(), chunk))
            if limit is not None and len(chunks) >= limit:
                break
    finally:
        await stream.aclose()
    return chunks


def test_chat_returns_the_upstream_answer_under_the_public_model_name(upstream):
    result = run(lambda: oc.OpenAICompatibleProvider().chat(spec(up(upstream.base_url)), CHAT))
    assert result.body["model"] == "public-model"
    assert result.body["choices"][0]["message"]["content"].startswith("The quick brown fox")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 10)
    assert result.usage.estimated is False
    assert result.upstream_latency_ms > 0


def test_missing_upstream_usage_is_estimated_and_marked(upstream):
    result = run(
        lambda: oc.OpenAICompatibleProvider().chat(
            spec(up(upstream.base_url, "fake-no-usage")), CHAT
        )
    )
    assert result.usage.estimated is True
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0


def test_provider_key_comes_from_the_named_environment_variable(upstream, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-upstream-secret")
    result = run(
        lambda: oc.OpenAICompatibleProvider().chat(
            spec(up(upstream.base_url, "fake-echo-auth", api_key_env="FAKE_PROVIDER_KEY")), CHAT
        )
    )
    assert result.body["choices"][0]["message"]["content"] == "Bearer sk-upstream-secret"


def test_falls_back_to_the_next_upstream_when_the_first_is_down(upstream):
    model = spec(up(DOWN, weight=1000), up(upstream.base_url, weight=1))
    result = run(lambda: oc.OpenAICompatibleProvider().chat(model, CHAT))
    assert result.body["model"] == "public-model"
    # The dead upstream is now skipped first: healthy ones come before it.
    assert oc.attempt_order(model.upstreams)[0].base_url == upstream.base_url


def test_5xx_is_retried_on_another_upstream(upstream):
    model = spec(up(upstream.base_url, "fake-500", weight=1000), up(upstream.base_url + "/"))
    result = run(lambda: oc.OpenAICompatibleProvider().chat(model, CHAT))
    assert result.usage.output_tokens == 10


def test_every_upstream_failing_is_a_502_upstream_error(upstream):
    with pytest.raises(ProviderError) as caught:
        run(
            lambda: oc.OpenAICompatibleProvider().chat(
                spec(up(DOWN), up(upstream.base_url, "fake-500")), CHAT
            )
        )
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")


def test_a_hung_upstream_is_a_504_after_its_timeout(upstream):
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        run(
            lambda: oc.OpenAICompatibleProvider().chat(
                spec(up(upstream.base_url, "fake-hang", timeout=0.5)), CHAT
            )
        )
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert time.monotonic() - started < 3


def test_upstream_400_is_passed_on_as_a_400_with_its_message(upstream):
    with pytest.raises(ApplicationError) as caught:
        run(
            lambda: oc.OpenAICompatibleProvider().chat(
                spec(up(upstream.base_url, "fake-400")), CHAT
            )
        )
    assert (caught.value.status, caught.value.code) == (400, "invalid_request_error")
    assert caught.value.message == "max_tokens is too large"
    assert caught.value.param is None


def test_embeddings_pass_through_with_usage(upstream):
    model = ModelSpec(
        name="public-embed",
        kind="embeddings",
        provider="openai_compatible",
        context_window=8192,
        test_mode_allowed=False,
        response_cache_ttl=0,
        upstreams=(up(upstream.base_url),),
    )
    result = run(lambda: oc.OpenAICompatibleProvider().embeddings(model, {"input": ["a", "b"]}))
    assert result.body["model"] == "public-embed"
    assert len(result.body["data"]) == 2
    assert result.usage.input_tokens == 6


def _events(chunks):
    """The SSE events of the relayed chunks: a chunk is one or more whole events (what the
    upstream sent in one read goes out in one write)."""
    events = []
    for _, raw in chunks:
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
        for event in raw[:-2].split(b"\n\n"):
            assert event.startswith(b"data: ")
            data = event[6:]
            events.append(data if data == b"[DONE]" else json.loads(data))
    return events


def test_stream_passes_chunks_through_with_usage_only_when_asked(upstream):
    usage = StreamUsage()
    chunks = run(lambda: collect(spec(up(upstream.base_url)), dict(CHAT, stream=True), usage))
    events = _events(chunks)
    assert events[-1] == b"[DONE]"
    assert all(e["model"] == "public-model" for e in events[:-1])
    assert all(e["choices"] for e in events[:-1])  # no usage-only chunk: not asked for
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "The quick brown fox jumps over the lazy dog."
    assert usage.finished and not usage.usage.estimated
    assert usage.usage.output_tokens == 9  # what the upstream reported, not an estimate

    usage = StreamUsage()
    asked = dict(CHAT, stream=True, stream_options={"include_usage": True})
    events = _events(run(lambda: collect(spec(up(upstream.base_url)), asked, usage)))
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 9


def test_stream_chunks_arrive_as_the_upstream_produces_them(upstream, monkeypatch):
    monkeypatch.setattr(fake_upstream, "FIRST_TOKEN_DELAY", 0.2)
    monkeypatch.setattr(fake_upstream, "STREAM_SECONDS", 0.6)
    usage = StreamUsage()
    started = time.monotonic()
    chunks = run(
        lambda: collect(spec(up(upstream.base_url, "fake-slow")), dict(CHAT, stream=True), usage)
    )
    first_content = chunks[1][0] - started
    last = chunks[-1][0] - started
    assert last >= 0.7
    assert first_content < last - 0.4, "chunks were buffered instead of passed through"


def test_client_hanging_up_mid_stream_closes_upstream_and_keeps_usage(upstream, monkeypatch):
    monkeypatch.setattr(fake_upstream, "FIRST_TOKEN_DELAY", 0.05)
    monkeypatch.setattr(fake_upstream, "STREAM_SECONDS", 2.0)
    usage = StreamUsage()
    started = time.monotonic()
    chunks = run(
        lambda: collect(
            spec(up(upstream.base_url, "fake-slow")), dict(CHAT, stream=True), usage, limit=4
        )
    )
    assert len(chunks) == 4
    assert time.monotonic() - started < 1.5  # did not wait for the rest of the stream
    assert usage.finished is False
    assert usage.usage.estimated is True
    assert usage.usage.input_tokens > 0 and usage.usage.output_tokens >= 3


def test_a_stream_counts_the_content_chunks_it_relayed_while_running(upstream, monkeypatch):
    # Upstreams report usage at the end: the in-flight registry's checkpoints (the output
    # tokens of a stream whose process dies) read this count instead.
    monkeypatch.setattr(fake_upstream, "FIRST_TOKEN_DELAY", 0.05)
    monkeypatch.setattr(fake_upstream, "STREAM_SECONDS", 2.0)
    usage = StreamUsage()
    chunks = run(
        lambda: collect(
            spec(up(upstream.base_url, "fake-slow")), dict(CHAT, stream=True), usage, limit=5
        )
    )
    with_text = [e for e in _events(chunks) if e["choices"][0]["delta"].get("content")]
    assert len(with_text) >= 3
    assert usage.produced == len(with_text)

    usage = StreamUsage()
    events = _events(
        run(lambda: collect(spec(up(upstream.base_url)), dict(CHAT, stream=True), usage))
    )
    assert usage.produced == len(
        [e for e in events[:-1] if e["choices"][0]["delta"].get("content")]
    )


def test_stream_from_a_hung_upstream_is_a_504(upstream):
    with pytest.raises(ProviderError) as caught:
        run(
            lambda: collect(
                spec(up(upstream.base_url, "fake-hang", timeout=0.5)),
                dict(CHAT, stream=True),
                StreamUsage(),
            )
        )
    assert caught.value.status == 504


def test_weighted_choice_prefers_heavier_upstreams():
    import random

    a, b = up("http://a.invalid/v1", weight=9), up("http://b.invalid/v1", weight=1)
    rng = random.Random(7)
    firsts = [oc.attempt_order((a, b), rng)[0].base_url for _ in range(1000)]
    share = firsts.count("http://a.invalid/v1") / len(firsts)
    assert 0.85 < share < 0.95


class _CraftedStream:
    """An upstream whose stream is exactly the given byte pieces, each sent and flushed on its
    own (a chunked HTTP response), to exercise the relay's line handling."""

    def __init__(self, pieces: list[bytes]) -> None:

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in outer.pieces:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    time.sleep(0.02)
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args):
                pass

        self.pieces = pieces
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chunk(content: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "model": "fake",
            "choices": [{"index": 0, "delta": {"content": content}}],
        }
    ).encode()


def test_events_split_across_reads_and_a_last_line_without_newline_are_relayed():
    first, second = _chunk("Hello"), _chunk(" world")
    pieces = [
        b"data: " + first[:10],  # an event cut in the middle
        first[10:] + b"\n\n: a comment\n\ndata: " + second + b"\n\n",  # the rest, and another
        b"data: [DONE]",  # the upstream closes without the final newline
    ]
    crafted = _CraftedStream(pieces)
    try:
        usage = StreamUsage()
        events = _events(
            run(lambda: collect(spec(up(crafted.base_url)), dict(CHAT, stream=True), usage))
        )
    finally:
        crafted.close()
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["Hello", " world"]
    assert all(e["model"] == "public-model" for e in events[:-1])
    assert events[-1] == b"[DONE]"
    assert usage.finished and usage.usage.estimated  # the upstream reported no usage


def test_an_upstream_event_without_end_is_a_502_not_an_unbounded_buffer(monkeypatch):
    monkeypatch.setattr(oc.stream, "MAX_EVENT_BYTES", 1000)  # read where the relay runs
    crafted = _CraftedStream(
        [b"data: " + _chunk("ok") + b"\n\n", b"data: " + b"x" * 600, b"y" * 600]
    )
    try:
        usage = StreamUsage()
        with pytest.raises(ProviderError) as raised:
            run(lambda: collect(spec(up(crafted.base_url)), dict(CHAT, stream=True), usage))
    finally:
        crafted.close()
    assert raised.value.status == 502
    assert "too large" in raised.value.message


# --- upstream failures: what the customer gets, what is recorded ------------------------------

STREAM = dict(CHAT, stream=True)
WITH_USAGE = dict(STREAM, stream_options={"include_usage": True})
OPERATOR_SIDE = [401, 403, 404, 429, 502, 503]
NONSENSE_USAGE = ["negative", "string", "float", "huge"]


def chat(model: ModelSpec, stream: bool):
    """The provider's answer to CHAT, non-stream or streamed to the end."""
    if stream:
        return run(lambda: collect(model, STREAM, StreamUsage()))
    return run(lambda: oc.OpenAICompatibleProvider().chat(model, CHAT))


@pytest.mark.parametrize("answer", ["fake-json-stream", "fake-html-stream"])
def test_stream_answered_without_an_event_stream_is_a_502_before_the_first_chunk(upstream, answer):
    stream = oc.OpenAICompatibleProvider().chat_stream(
        spec(up(upstream.base_url, answer)), STREAM, StreamUsage()
    )
    with pytest.raises(ProviderError) as caught:
        run(lambda: stream.__anext__())
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert caught.value.message == oc.NOT_AN_EVENT_STREAM


def test_stream_answered_without_an_event_stream_falls_back_to_the_next_upstream(upstream):
    model = spec(
        up(upstream.base_url, "fake-json-stream", weight=1000), up(upstream.base_url + "/")
    )
    usage = StreamUsage()
    events = _events(run(lambda: collect(model, STREAM, usage)))
    assert events[-1] == b"[DONE]" and usage.finished
    assert oc.attempt_order(model.upstreams)[0].upstream_model == "fake"  # the other is sick


def test_stream_closed_without_done_raises_a_502_after_the_chunks_and_estimates_usage(upstream):
    usage = StreamUsage()
    chunks = []

    async def read():
        stream = oc.OpenAICompatibleProvider().chat_stream(
            spec(up(upstream.base_url, "fake-no-done")), WITH_USAGE, usage
        )
        async for chunk in stream:
            chunks.append((0, chunk))

    with pytest.raises(ProviderError) as caught:
        run(read)
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert caught.value.message == oc.STREAM_CUT_SHORT
    events = _events(chunks)
    assert b"[DONE]" not in events
    assert all("usage" not in e for e in events)  # no usage chunk for a stream cut short
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "The quick brown fox jumps over the lazy dog."
    assert usage.finished is False and usage.usage.estimated is True
    assert usage.usage.output_tokens == count_tokens(text)


def test_upstream_error_event_mid_stream_is_our_502_without_its_message(upstream):
    chunks = []

    async def read():
        stream = oc.OpenAICompatibleProvider().chat_stream(
            spec(up(upstream.base_url, "fake-error-mid-stream")), STREAM, StreamUsage()
        )
        async for chunk in stream:
            chunks.append((0, chunk))

    with pytest.raises(ProviderError) as caught:
        run(read)
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert fake_upstream.UPSTREAM_SECRET not in caught.value.message
    assert all("error" not in event for event in _events(chunks))


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("status", OPERATOR_SIDE)
def test_operator_side_upstream_error_is_a_generic_502_logged_without_secrets(
    upstream, monkeypatch, caplog, status, stream
):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-upstream-secret")
    model = spec(up(upstream.base_url, f"fake-{status}", api_key_env="FAKE_PROVIDER_KEY"))
    with caplog.at_level("WARNING", logger=oc.__name__), pytest.raises(ProviderError) as caught:
        chat(model, stream)
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert caught.value.message == oc.UPSTREAM_FAILED.format(status=status)
    assert caught.value.message == (
        f"The model server answered HTTP {status}; the operator has been notified."
    )
    logged = [r for r in caplog.records if r.name == oc.__name__ and r.levelname == "WARNING"]
    assert logged and str(status) in logged[0].getMessage()
    assert fake_upstream.UPSTREAM_SECRET in logged[0].getMessage()  # the operator sees why
    assert "sk-upstream-secret" not in caplog.text


@pytest.mark.parametrize("status", OPERATOR_SIDE)
def test_operator_side_upstream_error_falls_back_to_the_next_upstream(upstream, status):
    model = spec(up(upstream.base_url, f"fake-{status}", weight=1000), up(upstream.base_url + "/"))
    result = run(lambda: oc.OpenAICompatibleProvider().chat(model, CHAT))
    assert result.usage.output_tokens == 10
    # The failing upstream is skipped for a while: the healthy one comes first.
    assert oc.attempt_order(model.upstreams)[0].upstream_model == "fake"


@pytest.mark.parametrize("status, asked", [(401, 1), (429, 1), (503, 2)])
def test_a_lone_upstream_is_retried_after_a_5xx_but_not_after_a_4xx(upstream, status, asked):
    name = f"fake-{status}"
    before = fake_upstream.errors_served.get(name, 0)
    with pytest.raises(ProviderError):
        chat(spec(up(upstream.base_url, name)), stream=False)
    assert fake_upstream.errors_served[name] - before == asked


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("status", [413, 422])
def test_customer_side_upstream_error_is_a_400_with_its_message_and_param_without_fallback(
    upstream, status, stream, monkeypatch
):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-upstream-secret-123")
    refusing = up(upstream.base_url, f"fake-{status}", api_key_env="FAKE_PROVIDER_KEY")
    working = up(upstream.base_url + "/")
    oc._unhealthy_until[working.base_url] = time.monotonic() + 60  # tried second, if at all
    with pytest.raises(ApplicationError) as caught:
        chat(spec(refusing, working), stream)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request_error")
    # The upstream's message, without what is the operator's business: its account, our key.
    assert caught.value.message == f"Upstream error {status} for ***, key 'Bearer ***'"
    assert caught.value.param == "messages"
    assert refusing.base_url not in oc._unhealthy_until  # it answered: it is healthy


@pytest.mark.parametrize("kind", NONSENSE_USAGE)
def test_nonsense_upstream_usage_is_estimated_and_the_client_gets_the_estimate(upstream, kind):
    result = run(
        lambda: oc.OpenAICompatibleProvider().chat(
            spec(up(upstream.base_url, f"fake-{kind}-usage")), CHAT
        )
    )
    assert result.usage.estimated is True
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.body["usage"] == {
        "prompt_tokens": result.usage.input_tokens,
        "completion_tokens": result.usage.output_tokens,
        "total_tokens": result.usage.input_tokens + result.usage.output_tokens,
    }


@pytest.mark.parametrize("kind", NONSENSE_USAGE)
def test_nonsense_upstream_usage_of_embeddings_is_estimated(upstream, kind):
    model = ModelSpec(
        name="public-embed",
        kind="embeddings",
        provider="openai_compatible",
        context_window=8192,
        test_mode_allowed=False,
        response_cache_ttl=0,
        upstreams=(up(upstream.base_url, f"fake-{kind}-usage"),),
    )
    result = run(lambda: oc.OpenAICompatibleProvider().embeddings(model, {"input": ["a fox"]}))
    assert result.usage.estimated is True and result.usage.input_tokens > 0
    assert result.body["usage"] == {
        "prompt_tokens": result.usage.input_tokens,
        "total_tokens": result.usage.input_tokens,
    }


@pytest.mark.parametrize("asked", [False, True], ids=["usage-not-asked", "usage-asked"])
@pytest.mark.parametrize("kind", NONSENSE_USAGE)
def test_nonsense_upstream_usage_in_a_stream_is_estimated_and_never_relayed(upstream, kind, asked):
    usage = StreamUsage()
    body = WITH_USAGE if asked else STREAM
    events = _events(
        run(lambda: collect(spec(up(upstream.base_url, f"fake-{kind}-usage")), body, usage))
    )
    assert events[-1] == b"[DONE]"
    assert usage.finished and usage.usage.estimated
    assert usage.usage.input_tokens > 0 and usage.usage.output_tokens > 0
    relayed = [e["usage"] for e in events[:-1] if e.get("usage") is not None]
    if asked:
        assert relayed == [
            {
                "prompt_tokens": usage.usage.input_tokens,
                "completion_tokens": usage.usage.output_tokens,
                "total_tokens": usage.usage.input_tokens + usage.usage.output_tokens,
            }
        ]
    else:
        assert relayed == []


def test_stream_without_upstream_usage_sends_an_estimated_usage_chunk_when_asked(upstream):
    usage = StreamUsage()
    events = _events(
        run(lambda: collect(spec(up(upstream.base_url, "fake-no-usage")), WITH_USAGE, usage))
    )
    assert events[-1] == b"[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert usage.usage.estimated and usage.usage.output_tokens == count_tokens(text)
    last = events[-2]
    assert set(last) == {"id", "object", "created", "model", "choices", "usage"}
    assert (last["id"], last["object"], last["model"]) == (
        events[0]["id"],
        "chat.completion.chunk",
        "public-model",
    )
    assert isinstance(last["created"], int) and last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": usage.usage.input_tokens,
        "completion_tokens": usage.usage.output_tokens,
        "total_tokens": usage.usage.input_tokens + usage.usage.output_tokens,
    }
    # Not asked: no usage chunk.
    events = _events(
        run(lambda: collect(spec(up(upstream.base_url, "fake-no-usage")), STREAM, StreamUsage()))
    )
    assert all(e.get("usage") is None for e in events[:-1])


def test_a_cookie_set_by_a_model_server_never_rides_on_the_next_request():
    """One pooled session serves every customer: an upstream's Set-Cookie must not be sent
    back on another customer's request."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.headers.get("Cookie"))
            body = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": "fake",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Set-Cookie", "session=customer-a-secret; Path=/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # By name: aiohttp's default jar would keep cookies of a host name, not of an IP address.
    model = spec(up(f"http://localhost:{server.server_address[1]}/v1"))

    async def twice():
        provider = oc.OpenAICompatibleProvider()
        await provider.chat(model, dict(CHAT))
        await provider.chat(model, dict(CHAT))

    try:
        run(twice)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [None, None]


def test_what_a_customer_is_told_of_an_upstream_refusal_holds_nothing_of_the_operators():
    upstream = up("http://gpu-7.internal:8000/v1", "meta-llama/Llama-3-70B-Instruct")
    told = oc.errors._told(
        upstream,
        "Model meta-llama/Llama-3-70B-Instruct at http://gpu-7.internal:8000/v1 (gpu-7.internal)"
        " allows 8192 tokens;\n account org-a1b2c3d4e5, proj_9f8e7d6c5b, key sk-abcdef123456",
        "public-model",
    )
    assert told == (
        "Model public-model at the model server (the model server) allows 8192 tokens; "
        "account ***, ***, key ***"
    )
