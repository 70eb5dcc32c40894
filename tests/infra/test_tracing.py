"""Tracing (infra/tracing.py) in this process, with the SDK's InMemorySpanExporter: a /v1 request
through the production ASGI application (the openai SDK on an in-process transport) is one trace
with the gateway's spans, honours an incoming traceparent, names its trace in X-Trace-Id and in
its JSON log line; Django and Celery are instrumented; off, nothing of it exists.

Transactional: a cold key is verified in a worker thread, which sees committed rows only.
"""

import io
import json
import logging
import subprocess
import sys
from decimal import Decimal

import openai
import pytest
from django.db import connection
from django.test import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from accounts.actors import Actor
from aibaas.gateway.models import ProviderKind
from aibaas.gateway.providers import openai_compatible as oc
from infra import tracing
from infra.logs import JsonFormatter
from keys import touch, verification
from keys.services import api_key_create
from tests.factories import AIModelFactory, MembershipFactory, ModelPriceFactory, UpstreamFactory
from tests.gateway.asgi_client import BASE, SyncAsgiTransport
from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Tell me about foxes."}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
GATEWAY_SPANS = {"keys.verify", "metering.admit", "gateway.upstream", "metering.usage_emit"}


def fresh_connections() -> None:
    """Open the next database connection anew (through psycopg as instrumented now, or not)."""
    connection.close()
    if getattr(connection, "pool", None) is not None:
        connection.close_pool()


@pytest.fixture
def spans():
    """Tracing on in this process for the test, every span kept in memory."""
    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter=exporter)
    yield exporter
    tracing.shutdown()
    fresh_connections()  # none keeps the instrumentation's cursors


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


@pytest.fixture
def membership(db):
    return MembershipFactory()


@pytest.fixture
def raw_key(membership) -> str:
    return api_key_create(
        organization=membership.organization, actor=Actor.for_system("tests"), name="tracing"
    ).raw_key


@pytest.fixture
def request_log():
    """The JSON lines of the /v1 request log (aibaas.requests), as production writes them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("aibaas.requests")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    log.removeHandler(handler)
    log.setLevel(level)


def served_model(upstream, *upstreams: tuple[str, str]) -> str:
    """A public model served by the fake upstream: (base URL host, upstream model) each."""
    model = AIModelFactory(name="traced-model", provider=ProviderKind.OPENAI_COMPATIBLE)
    for host, upstream_name in upstreams:
        UpstreamFactory(
            model=model,
            base_url=upstream.base_url.replace("127.0.0.1", host),
            upstream_model=upstream_name,
            api_key_env="",
            timeout_seconds=5.0,
            connect_timeout_seconds=1.0,
        )
    ModelPriceFactory(model=model, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    return model.name


def sdk(raw_key: str, **headers) -> openai.OpenAI:
    import httpx

    http = httpx.Client(transport=SyncAsgiTransport(), base_url=BASE)
    return openai.OpenAI(
        api_key=raw_key,
        base_url=f"{BASE}/v1",
        http_client=http,
        max_retries=0,
        default_headers=headers,
    )


def chat(client: openai.OpenAI, model: str):
    """The raw response of one chat completion (its headers), errors included."""
    try:
        return client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    except openai.APIStatusError as error:
        return error.response


def by_name(exporter: InMemorySpanExporter) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        named.setdefault(span.name, []).append(span)
    return named


def server_span(exporter: InMemorySpanExporter):
    [span] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


def test_a_chat_request_is_one_trace_with_the_gateway_spans_under_its_server_span(
    spans, upstream, raw_key, request_log
):
    model = served_model(upstream, ("127.0.0.1", "fake"))
    response = chat(sdk(raw_key), model)
    assert response.status_code == 200
    server = server_span(spans)
    assert server.name == "POST /v1/chat/completions"
    assert server.parent is None  # no traceparent came: the request starts the trace
    assert server.attributes["http.response.status_code"] == 200
    trace_id = server.context.trace_id
    assert response.headers["x-trace-id"] == f"{trace_id:032x}"
    named = by_name(spans)
    assert named.keys() >= GATEWAY_SPANS
    for name in GATEWAY_SPANS:
        [span] = named[name]
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == server.context.span_id, name
    [upstream_span] = named["gateway.upstream"]
    assert upstream_span.attributes["aibaas.model"] == model
    assert upstream_span.attributes["aibaas.provider"] == "openai_compatible"
    [attempt] = named["gateway.upstream.attempt"]
    assert attempt.parent.span_id == upstream_span.context.span_id
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["aibaas.upstream_model"] == "fake"
    # The aiohttp client's own span (the instrumentation) is the attempt's child.
    [client] = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.parent and s.parent.span_id == attempt.context.span_id
    ]
    assert (
        client.attributes.get(
            "http.response.status_code", client.attributes.get("http.status_code")
        )
        == 200
    )
    # The request's log line names the same trace, and the server span.
    [line] = request_log()
    assert line["trace_id"] == response.headers["x-trace-id"]
    assert line["span_id"] == f"{server.context.span_id:016x}"
    assert line["status"] == 200 and line["model"] == model


def test_a_retry_and_a_fallback_are_separate_upstream_attempt_spans(spans, upstream, raw_key):
    # A lone upstream that fails is asked twice (one retry): two failed attempts, then a 502.
    model = served_model(upstream, ("127.0.0.1", "fake-503"))
    assert chat(sdk(raw_key), model).status_code == 502
    attempts = by_name(spans)["gateway.upstream.attempt"]
    assert [a.attributes["http.response.status_code"] for a in attempts] == [503, 503]
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
    [upstream_span] = by_name(spans)["gateway.upstream"]
    assert {a.parent.span_id for a in attempts} == {upstream_span.context.span_id}
    assert server_span(spans).attributes["http.response.status_code"] == 502


def test_a_fallback_to_the_next_upstream_is_its_own_span(spans, upstream, raw_key):
    # Two upstreams; "localhost" counts as unhealthy, so the failing one is asked first.
    model = served_model(upstream, ("127.0.0.1", "fake-500"), ("localhost", "fake"))
    oc._unhealthy_until[upstream.base_url.replace("127.0.0.1", "localhost")] = 1e12
    assert chat(sdk(raw_key), model).status_code == 200
    attempts = by_name(spans)["gateway.upstream.attempt"]
    assert [
        (a.attributes["aibaas.upstream_model"], a.attributes["http.response.status_code"])
        for a in attempts
    ] == [("fake-500", 500), ("fake", 200)]
    assert [a.attributes["aibaas.attempt"] for a in attempts] == [1, 2]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].status.status_code is not StatusCode.ERROR


def test_an_incoming_traceparent_is_the_parent_of_the_server_span(spans, upstream, raw_key):
    model = served_model(upstream, ("127.0.0.1", "fake"))
    client = sdk(raw_key, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    response = chat(client, model)
    server = server_span(spans)
    assert f"{server.context.trace_id:032x}" == TRACE_ID == response.headers["x-trace-id"]
    assert f"{server.parent.span_id:016x}" == PARENT_ID and server.parent.is_remote
    for name in GATEWAY_SPANS:
        assert {f"{s.context.trace_id:032x}" for s in by_name(spans)[name]} == {TRACE_ID}


def test_a_refused_request_is_traced_too(spans, raw_key):
    response = chat(sdk(raw_key[:-2] + "xx"), "demo-chat")
    assert response.status_code == 401
    server = server_span(spans)
    assert response.headers["x-trace-id"] == f"{server.context.trace_id:032x}"
    [verify] = by_name(spans)["keys.verify"]
    assert verify.status.status_code is StatusCode.ERROR


def test_tracing_off_means_no_header_no_trace_ids_in_logs(upstream, raw_key, request_log):
    assert not tracing.on()
    model = served_model(upstream, ("127.0.0.1", "fake"))
    response = chat(sdk(raw_key), model)
    assert response.status_code == 200
    assert "x-trace-id" not in response.headers
    [line] = request_log()
    assert "trace_id" not in line and "span_id" not in line


def test_off_unless_an_endpoint_is_set_and_then_set_up_with_the_instrumentations():
    """A fresh process: without OTEL_EXPORTER_OTLP_ENDPOINT, loading the application imports
    nothing of the SDK and installs no instrumentation; with it, both."""
    probe = (
        "import sys, aibaas.asgi; from django.conf import settings; from infra import tracing; "
        "print(tracing.on(), 'opentelemetry.sdk.trace' in sys.modules, "
        "any('opentelemetry' in m for m in settings.MIDDLEWARE))"
    )

    def run(**env) -> str:
        import os

        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        completed = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            env={**clean, "DATABASE_URL": "sqlite:///:memory:", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout.split()

    assert run() == ["False", "False", "False"]
    # Nothing listens there: spans are buffered and dropped, the process does not care.
    assert run(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9") == ["True", "True", "True"]
    assert run(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SDK_DISABLED="true") == [
        "False",
        "False",
        "False",
    ]


def test_a_django_api_request_is_traced_by_the_instrumentation(spans, membership):
    fresh_connections()  # in production, tracing is set up before the first connection
    client = Client()  # its handler builds Django's middleware now, the instrumentation's included
    client.force_login(membership.user)
    response = client.get("/api/keys", HTTP_TRACEPARENT=f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert response.status_code == 200
    [server] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.name.startswith("GET") and "api/keys" in server.name
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    if connection.vendor == "postgresql":
        queries = [
            s for s in spans.get_finished_spans() if s.attributes.get("db.system") == "postgresql"
        ]
        assert [q for q in queries if q.context.trace_id == server.context.trace_id]


def test_a_celery_task_is_traced_by_the_instrumentation(spans):
    from billing.subscriptions.tasks import expire_grace_periods

    expire_grace_periods.delay()  # eager here (no broker): run in this process
    [run] = [s for s in spans.get_finished_spans() if s.name.startswith("run/")]
    assert run.name == "run/billing.subscriptions.tasks.expire_grace_periods"
    assert run.kind is SpanKind.CONSUMER


def test_a_stream_is_one_trace_too_its_usage_emitted_when_it_ends(spans, upstream, raw_key):
    model = served_model(upstream, ("127.0.0.1", "fake"))
    with sdk(raw_key).chat.completions.with_streaming_response.create(
        model=model, messages=HELLO, stream=True
    ) as response:
        trace_id = response.headers["x-trace-id"]
        assert list(response.iter_lines())
    server = server_span(spans)
    assert f"{server.context.trace_id:032x}" == trace_id
    named = by_name(spans)
    [upstream_span] = named["gateway.upstream"]
    assert upstream_span.attributes["aibaas.stream"] is True
    assert upstream_span.parent.span_id == server.context.span_id
    [attempt] = named["gateway.upstream.attempt"]
    assert attempt.parent.span_id == upstream_span.context.span_id
    [emit] = named["metering.usage_emit"]  # after the last chunk, still in the request's trace
    assert f"{emit.context.trace_id:032x}" == trace_id
