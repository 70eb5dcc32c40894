"""One /v1 inference request, framework-light: the ASGI handler (aibaas/gateway/asgi.py) hands
over an `Inbound` and sends the `Reply`.

per-IP limit → auth (keys.verification) → scope → body → model (registry: exists, allow-list,
test mode, kind) → admission (metering/admission.py: the key's windows, the organization's
quota; 429 otherwise) → response cache → provider → one usage event (aibaas/gateway/call.py).
Invariants: every request past authentication leaves exactly one usage event, failed ones and
streams cut short too (aibaas/gateway/streaming.py); every reply after admission carries the
rate-limit headers; a per-IP refusal wins over any other answer.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aibaas.gateway import request_log, response_cache, streaming, validation
from aibaas.gateway.call import UNKNOWN_MODEL, Call
from aibaas.gateway.providers import provider_for
from aibaas.gateway.providers.base import ModelSpec, ProviderResult
from aibaas.gateway.registry import amodel_spec, key_may_use
from aibaas.gateway.tokenizer import (
    count_chat_tokens,
    estimate_chat_tokens,
    estimate_embedding_tokens,
)
from infra import tracing
from infra.errors import INVALID_REQUEST, ApplicationError
from keys.authentication import CHALLENGE
from keys.permissions import MODEL_NOT_ALLOWED, require_model, require_scope
from keys.touch import note_key_use
from keys.verification import INVALID_API_KEY, MISSING_KEY_MESSAGE, aauthenticate_key
from metering.admission import IpGate, limiter, rate_limit_headers

logger = logging.getLogger(__name__)

MODEL_NOT_FOUND = "model_not_found"
INFERENCE_SCOPE = "inference"
CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
# A model kind: what it is, and where it is called.
_KIND_ENDPOINTS = {
    "chat": ("a chat", "/v1/chat/completions"),
    "embeddings": ("an embeddings", "/v1/embeddings"),
}


@dataclass(slots=True)
class Inbound:
    """What the pipeline needs from an HTTP request."""

    raw_key: str | None
    request_id: str  # the id of the usage event (unique per request)
    client_ip: str | None
    content_type: str = ""
    content_encoding: str = ""
    content_length: int | None = None
    read_body: Callable[[], bytes] | None = None
    max_body_bytes: int = 1 << 20


@dataclass(slots=True)
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The request's usage event (and the settlement of its limits), for the server to run once
    # the reply is sent, whatever happens to the sending: the client does not wait for it, as
    # it does not wait for a stream's. Must be called exactly once when set.
    after: Callable[[], Awaitable[None]] | None = None


def error_reply(error: ApplicationError, headers: dict[str, str] | None = None) -> Reply:
    request_log.note_error(error)
    headers = {**(headers or {}), **error.headers}
    if error.status == 401:
        headers["WWW-Authenticate"] = CHALLENGE
    return Reply(status=error.status, body=error.as_dict(), headers=headers)


async def authenticate(inbound: Inbound):
    """The caller's KeyContext, or ApplicationError 401 (missing, invalid, revoked, expired)."""
    if not inbound.raw_key:
        raise ApplicationError(INVALID_API_KEY, MISSING_KEY_MESSAGE, status=401)
    with tracing.span("keys.verify") as span:
        context = await aauthenticate_key(inbound.raw_key)  # or KeyRejected, ApplicationError
        tracing.annotate(span, {"aibaas.key_id": context.key_id})
    note_key_use(context.pk, context.key_id, inbound.client_ip)
    request_log.note_key(context)
    return context


def _body(inbound: Inbound) -> dict[str, Any]:
    limit = inbound.max_body_bytes
    if inbound.content_length is not None and inbound.content_length > limit:
        raise validation.too_large(limit)
    raw = inbound.read_body() if inbound.read_body else b""
    return validation.parse_json_body(inbound.content_type, raw, limit, inbound.content_encoding)


def model_not_found(name: str) -> ApplicationError:
    return ApplicationError(
        MODEL_NOT_FOUND,
        f"The model '{name}' does not exist or is not available. GET /v1/models lists the "
        "models this key may use.",
        status=404,
        param="model",
    )


def _call_model(body: dict[str, Any]) -> str:
    """The model name a usage event is recorded under, whatever the body says."""
    model = body.get("model")
    if isinstance(model, str) and model.strip():
        return model.strip()[:200]
    return UNKNOWN_MODEL


async def _model(call: Call, name: str, kind: str) -> ModelSpec:
    spec = await amodel_spec(name)
    request_log.note_model(name, known=spec is not None)
    if spec is None:
        raise model_not_found(name)
    require_model(call.key, name)
    if not key_may_use(call.key, spec):
        raise ApplicationError(
            MODEL_NOT_ALLOWED,
            f"Test-mode keys (sk_test_...) may only use the demo models; '{name}' needs a live "
            "key (sk_live_...).",
            status=403,
            param="model",
        )
    if spec.kind != kind:
        raise ApplicationError(
            INVALID_REQUEST,
            _wrong_endpoint_message(name, spec.kind),
            status=400,
            param="model",
        )
    return spec


def _wrong_endpoint_message(name: str, kind: str) -> str:
    what, path = _KIND_ENDPOINTS.get(str(kind), (f"a {kind}", ""))
    where = f": call it with POST {path}" if path else ""
    return f"The model '{name}' is {what} model{where}."


async def _run(inbound: Inbound, endpoint: str, work: Callable[[Call], Awaitable[Reply]]) -> Reply:
    # The per-IP layer runs alongside (metering.admission.IpGate); its refusal wins over any
    # other answer, and a request it refuses counts nowhere and records no usage event.
    gate = IpGate(inbound.client_ip)
    try:
        key = await authenticate(inbound)
    except ApplicationError as error:
        return error_reply(await gate.refusal() or error)
    call = Call(inbound.request_id, inbound.client_ip, key, endpoint, gate)
    try:
        require_scope(key, INFERENCE_SCOPE)
        reply = await work(call)
        reply.headers.update(call.headers)
        return reply
    except ApplicationError as error:  # a ProviderError included
        if call.admission is None:
            # Refused before admission (bad body, unknown model): the key's windows are read
            # without counting, for the headers every /v1 answer to a key carries.
            refusal, headers = await peek_limits(key, gate)
        else:
            refusal, headers = await gate.refusal(), call.headers
        if refusal is not None:
            return error_reply(refusal)
        reply = error_reply(error, headers)
        reply.after = partial(call.record, error.status, error_code=error.code)
        return reply
    except BaseException as error:
        # A bug (500) or the client hanging up (cancelled): still one event for the request.
        status = streaming.CLIENT_CLOSED if isinstance(error, asyncio.CancelledError) else 500
        await asyncio.shield(call.record(status))
        raise


async def peek_limits(key, gate: IpGate) -> tuple[ApplicationError | None, dict[str, str]]:
    """The per-IP refusal of this request, if any, and the rate-limit headers of the key's
    windows read without counting. The windows' read is issued before the per-IP check is
    awaited: both go in one round trip. A failing read costs the headers, not the answer."""
    gate.start()
    windows = None
    if not gate.retry:  # not refused already (admission may have asked it)
        try:
            windows = limiter.peek_start(key.key_id, limiter.limits_for(key.limits))
        except Exception:
            logger.warning("rate-limit windows unreadable for the headers", exc_info=True)
    refusal = await gate.refusal()
    headers: dict[str, str] = {}
    if windows is not None:
        # Awaited even when refused: the read carries the key's pending settlements, which
        # must not be left in a call nobody finishes.
        try:
            headers = rate_limit_headers(await limiter.peek_finish(windows))
        except Exception:
            logger.warning("rate-limit windows unreadable for the headers", exc_info=True)
    return refusal, {} if refusal is not None else headers


async def _checked(call: Call, inbound: Inbound, validate, kind: str):
    """The request's body, model name and model, checked: 400, 403 or 404 otherwise."""
    body = _body(inbound)
    call.model = _call_model(body)
    name = validate(body)
    return body, name, await _model(call, name, kind)


def _upstream_span(spec: ModelSpec, *, stream: bool = False):
    """The span of the provider's answer; an upstream's attempts are its children
    (providers/openai_compatible/upstreams.py)."""
    if not tracing.on():
        return tracing.span("gateway.upstream")  # off: a shared null context, nothing built
    return tracing.span(
        "gateway.upstream",
        {"aibaas.provider": spec.provider, "aibaas.model": spec.name, "aibaas.stream": stream},
    )


def _answer(call: Call, result: ProviderResult, headers: dict[str, str] | None = None) -> Reply:
    """A provider's answer, its usage event recorded once it is sent."""
    after = partial(call.record, 200, result.usage, upstream_latency_ms=result.upstream_latency_ms)
    return Reply(body=result.body, headers=headers or {}, after=after)


async def chat(inbound: Inbound) -> Reply:
    """POST /v1/chat/completions."""

    async def work(call: Call) -> Reply:
        body, name, spec = await _checked(call, inbound, validation.validate_chat, "chat")
        prompt = count_chat_tokens(body.get("messages") or [])
        await call.admit(estimate_chat_tokens(body, spec.context_window, prompt=prompt), prompt)
        provider = provider_for(spec)
        if body.get("stream"):
            with _upstream_span(spec, stream=True):  # to the first chunk
                stream = await streaming.open_stream(provider, spec, body, call.record)
            call.streaming(stream.usage)
            return Reply(stream=stream)
        key = None
        if response_cache.cacheable(spec, body):
            key = response_cache.cache_key(call.key.organization_id, name, body)
            hit = await response_cache.aget(key)
            if hit is not None:
                return Reply(
                    body=hit[0],
                    headers={"X-Cache": "HIT"},
                    after=partial(call.record, 200, hit[1], cached=True),
                )
        with _upstream_span(spec):
            result = await provider.chat(spec, body)
        if key is None:
            return _answer(call, result)
        await response_cache.aset(key, result, spec.response_cache_ttl)
        return _answer(call, result, {"X-Cache": "MISS"})

    return await _run(inbound, CHAT, work)


async def embeddings(inbound: Inbound) -> Reply:
    """POST /v1/embeddings."""

    async def work(call: Call) -> Reply:
        body, _, spec = await _checked(call, inbound, validation.validate_embeddings, "embeddings")
        tokens = estimate_embedding_tokens(body)
        await call.admit(tokens, tokens)
        with _upstream_span(spec):
            result = await provider_for(spec).embeddings(spec, body)
        return _answer(call, result)

    return await _run(inbound, EMBEDDINGS, work)
