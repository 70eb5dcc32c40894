"""OpenTelemetry tracing, off unless OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_ variant) is set.

`setup()` runs once in each process that serves or works (aibaas/asgi.py and wsgi.py as a
worker loads the app, Celery's worker_process_init): an OTLP/HTTP exporter behind a batch
processor, and the instrumentations of Django, psycopg, redis, the aiohttp client and Celery.
The rest of the configuration is the SDK's own OTEL_* variables (service name, headers,
sampler, propagators). Off, nothing of the SDK is imported, nothing is instrumented, and
`span()` returns a shared null context: a call site on the /v1 path costs one global read.
"""

import contextlib
import logging
import os

logger = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
DEFAULT_SERVICE_NAME = "aibaas"
# The response header that names a /v1 request's trace (32 hex digits, as in the logs).
TRACE_ID_HEADER = "X-Trace-Id"
_TRACE_ID_HEADER = TRACE_ID_HEADER.lower().encode()  # ASGI header names are lower-case bytes

_NULL = contextlib.nullcontext()
_tracer = None  # the gateway's opentelemetry Tracer while tracing is on
_provider = None
_instrumentors: list = []


def configured() -> bool:
    """Whether the environment asks for tracing (an OTLP endpoint, and the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def on() -> bool:
    return _tracer is not None


def setup(*, exporter=None) -> bool:
    """Start tracing in this process if configured (idempotent); True when on. `exporter`
    replaces the OTLP one and is flushed span by span (the SDK's InMemorySpanExporter)."""
    global _tracer, _provider
    if _tracer is not None:
        return True  # a forked child too: the SDK restarts its export thread after a fork
    if exporter is None and not configured():
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler is
    # TracerProvider's reading of OTEL_TRACES_SAMPLER(_ARG) (default: parent-based, always on).
    service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # for code that asks the global API
    _instrument(provider)
    _provider = provider
    _tracer = provider.get_tracer("aibaas")
    logger.info("tracing on: service %s", service)
    return True


def _instrument(provider) -> None:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (
        DjangoInstrumentor(),
        PsycopgInstrumentor(),
        RedisInstrumentor(),
        AioHttpClientInstrumentor(),
        CeleryInstrumentor(),
    ):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
            _instrumentors.append(instrumentor)


def shutdown() -> None:
    """Export what is buffered and stop tracing in this process (Celery's pool processes end
    without the SDK's exit hook; tests turn tracing off again)."""
    global _tracer, _provider
    if _provider is None:
        return
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    _provider.shutdown()
    _tracer = _provider = None


def span(name: str, attributes: dict | None = None):
    """A context manager: a child span of the current one, entered as the current span and
    yielded (an exception escaping it is recorded and marks it failed); None when off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def annotate(span, attributes: dict, *, error: str | None = None) -> None:
    """Set attributes on a span from `span()` (None: nothing); `error` marks it failed."""
    if span is None:
        return
    span.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; None when off or none."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


async def serve(scope, send, run, *, route: str) -> None:
    """Run `run(send)`, one ASGI HTTP request, as the current server span: the child of the
    client's W3C traceparent if it sent one, its trace id in the X-Trace-Id response header.
    Called only when on."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"traceparent", b"tracestate", b"baggage")
    }
    method = scope["method"]
    attributes = {"http.request.method": method, "http.route": route, "url.path": scope["path"]}
    with _tracer.start_as_current_span(
        f"{method} {route}",
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ) as server_span:
        trace_id = trace.format_trace_id(server_span.get_span_context().trace_id).encode()

        async def send_traced(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                server_span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    server_span.set_status(Status(StatusCode.ERROR))
                headers = [*message.get("headers", ()), (_TRACE_ID_HEADER, trace_id)]
                message = {**message, "headers": headers}
            await send(message)

        await run(send_traced)
