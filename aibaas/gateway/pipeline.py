"""One /v1 inference request, framework-light: the ASGI handler (aibaas/gateway/asgi.py) hands
over an `Inbound` and sends the `Reply`.

per-IP limit → auth (keys.verification, async) → scope → body (size, JSON, validation) → model
(registry: exists, allow-list, test mode, kind) → admission (metering/admission.py: the key's
sliding windows in one Redis round trip, the organization's monthly quota; 429 otherwise) →
response cache → provider → one usage event, which also settles the token windows and quota
with the tokens really used. Every reply after admission carries the rate-limit headers.

Every request that got past authentication leaves exactly one usage event, failed ones too
(their status, 0 tokens). A stream records its event when it ends, however it ends: the last
chunk, an upstream error, or the client hanging up (the generator is closed or cancelled; the
event is then written by a task of its own that the cancellation cannot reach).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from django.utils import timezone

from aibaas.gateway import request_log, response_cache, streaming, validation
from aibaas.gateway.providers import provider_for
from aibaas.gateway.providers.base import ModelSpec, Usage
from aibaas.gateway.registry import amodel_spec, amodels_for_key, key_may_use
from aibaas.gateway.tokenizer import (
    count_chat_tokens,
    estimate_chat_tokens,
    estimate_embedding_tokens,
)
from billing.pricing import ZERO_COST, acost_for
from infra.errors import INTERNAL_ERROR, INVALID_REQUEST, ApplicationError
from infra.http import canonical_ip
from keys.authentication import CHALLENGE
from keys.permissions import MODEL_NOT_ALLOWED, require_model, require_scope
from keys.touch import note_key_use
from keys.verification import INVALID_API_KEY, MISSING_KEY_MESSAGE, aauthenticate_key
from metering import inflight, limiter
from metering.admission import Admission, IpGate, aadmit, rate_limit_headers
from metering.events import UsageEventData, ausage_emit
from metering.reaper import INTERRUPTED, INTERRUPTED_STATUS, marker

logger = logging.getLogger(__name__)

MODEL_NOT_FOUND = "model_not_found"
INFERENCE_SCOPE = "inference"
CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
UNKNOWN_MODEL = "unknown"
CLIENT_CLOSED = streaming.CLIENT_CLOSED
# The error code of an event whose answer had none of its own (a stream's end, a crash).
CLIENT_CLOSED_CODE = "client_closed_request"
_STATUS_CODES = {
    CLIENT_CLOSED: CLIENT_CLOSED_CODE,
    500: INTERNAL_ERROR,
    502: "upstream_error",
    504: "upstream_timeout",
    INTERRUPTED_STATUS: INTERRUPTED,
}


@dataclass(slots=True)
class Inbound:
    """What the pipeline needs from an HTTP request."""

    raw_key: str | None
    request_id: str  # the id of the usage event (unique per request)
    client_ip: str | None
    content_type: str = ""
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
    headers = {**(headers or {}), **error.headers}
    if error.status == 401:
        headers["WWW-Authenticate"] = CHALLENGE
    return Reply(status=error.status, body=error.as_dict(), headers=headers)


async def authenticate(inbound: Inbound):
    """The caller's KeyContext, or ApplicationError 401 (missing, invalid, revoked, expired)."""
    if not inbound.raw_key:
        raise ApplicationError(INVALID_API_KEY, MISSING_KEY_MESSAGE, status=401)
    context = await aauthenticate_key(inbound.raw_key)  # or KeyRejected, an ApplicationError
    note_key_use(context.pk, context.key_id, inbound.client_ip)
    request_log.note_key(context)
    return context


class Call:
    """One authenticated inference request and its (single) usage event."""

    def __init__(self, inbound: Inbound, key, endpoint: str, gate: IpGate) -> None:
        self.inbound = inbound
        self.gate = gate
        self.key = key
        self.endpoint = endpoint
        self.model = UNKNOWN_MODEL
        self.started = time.perf_counter()
        self.recorded = False
        self.admission: Admission | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The rate-limit headers of this request (none before admission)."""
        return dict(self.admission.headers) if self.admission is not None else {}

    async def admit(self, tokens: int, input_tokens: int) -> None:
        """Admission (429 otherwise); then the request's marker in the in-flight registry: if
        this process dies, a survivor records it as interrupted with `input_tokens`."""
        self.admission = await aadmit(
            self.key, tokens=tokens, client_ip=self.inbound.client_ip, gate=self.gate
        )
        registry = inflight.current()
        if registry is not None:
            registry.admitted(self.inbound.request_id, self._marker(input_tokens))

    def _marker(self, input_tokens: int) -> str:
        """This request's event if its process died now, in UsageEventData.to_json's fields,
        without building one (~3 times cheaper: this is the request path)."""
        fields = {
            "request_id": self.inbound.request_id,
            "organization_id": self.key.organization_id,
            "api_key_id": self.key.pk,
            "key_id": self.key.key_id,
            "model": self.model,
            "endpoint": self.endpoint,
            "status_code": INTERRUPTED_STATUS,
            "error_code": INTERRUPTED,
            "input_tokens": input_tokens,
            "estimated": True,
            "cost": "0",
            "client_ip": canonical_ip(self.inbound.client_ip),
            "created_at": timezone.now().isoformat(),
            **self._admitted(),
        }
        if "quota_period" in fields:
            fields["quota_period"] = fields["quota_period"].isoformat()
        return marker(fields, test_mode=self.key.test_mode)

    def _event(
        self,
        status: int,
        usage: Usage,
        *,
        cost: Decimal = ZERO_COST,
        cached: bool = False,
        upstream_latency_ms: float | None = None,
        error_code: str | None = None,
    ) -> UsageEventData:
        return UsageEventData(
            request_id=self.inbound.request_id,
            organization_id=self.key.organization_id,
            api_key_id=self.key.pk,
            key_id=self.key.key_id,
            model=self.model,
            endpoint=self.endpoint,
            status_code=status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            estimated=usage.estimated,
            cached=cached,
            cost=cost,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            upstream_latency_ms=None if upstream_latency_ms is None else int(upstream_latency_ms),
            client_ip=canonical_ip(self.inbound.client_ip),
            error_code=_error_code(status, error_code),
            **self._admitted(),
        )

    async def record(
        self,
        status: int,
        usage: Usage | None = None,
        *,
        cached: bool = False,
        upstream_latency_ms: float | None = None,
        error_code: str | None = None,
    ) -> None:
        if self.recorded:
            return
        self.recorded = True
        usage = usage or Usage()
        if usage.input_tokens < 0 or usage.output_tokens < 0:
            # Never a reason to lose the event (usage is money): providers validate what an
            # upstream reports; this is the last guard.
            logger.warning("negative usage %s for %s counted as 0", usage, self.inbound.request_id)
            usage = Usage(max(usage.input_tokens, 0), max(usage.output_tokens, 0), estimated=True)
        cost = ZERO_COST
        if not self.key.test_mode and (usage.input_tokens or usage.output_tokens):
            cost = await acost_for(
                model=self.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached=cached,
            )
        event = self._event(
            status,
            usage,
            cost=cost,
            cached=cached,
            upstream_latency_ms=upstream_latency_ms,
            error_code=error_code,
        )
        if self.admission is not None:
            # No wait of its own on Redis: the settlement rides with the key's next check. The
            # quota's is usage_record's, when the event is stored (exactly once).
            await self.admission.asettle(usage.input_tokens + usage.output_tokens)
        await self._emit(event)

    def streaming(self, usage) -> None:
        """The stream's StreamUsage: its output tokens are checkpointed (metering/inflight.py)."""
        registry = inflight.current()
        if registry is not None:
            registry.streaming(self.inbound.request_id, usage)

    def _admitted(self) -> dict[str, Any]:
        """The event's fields of the admission: billable or not, the quota's estimate."""
        admission = self.admission
        if admission is None:
            return {"billable": False}
        if admission.quota_period is None:
            return {"billable": True}
        return {
            "billable": True,
            "quota_period": admission.quota_period,
            "quota_generation": admission.quota_generation,
            "quota_tokens": admission.estimate,
        }

    @staticmethod
    async def _emit(event: UsageEventData) -> None:
        try:
            await ausage_emit(event)
        except Exception:
            # ausage_emit logged the event's JSON (a replayable record); the client's answer
            # is not withheld for a bookkeeping failure.
            logger.exception("usage event %s not recorded", event.request_id)


def _error_code(status: int, code: str | None) -> str:
    if code is not None or status < 400:
        return code or ""
    return _STATUS_CODES.get(status, f"http_{status}")


def _body(inbound: Inbound) -> dict[str, Any]:
    limit = inbound.max_body_bytes
    if inbound.content_length is not None and inbound.content_length > limit:
        raise validation.too_large(limit)
    raw = inbound.read_body() if inbound.read_body else b""
    return validation.parse_json_body(inbound.content_type, raw, limit)


def _model_not_found(name: str) -> ApplicationError:
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
    request_log.note_model(name)
    spec = await amodel_spec(name)
    if spec is None:
        raise _model_not_found(name)
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
        wanted = "chat" if kind == "chat" else "embeddings"
        raise ApplicationError(
            INVALID_REQUEST,
            f"The model '{name}' is a {spec.kind} model, not a {wanted} model.",
            status=400,
            param="model",
        )
    return spec


async def _run(inbound: Inbound, endpoint: str, work: Callable[[Call], Awaitable[Reply]]) -> Reply:
    # The per-IP layer runs alongside (metering.admission.IpGate); its refusal wins over any
    # other answer, and a request it refuses counts nowhere and records no usage event.
    gate = IpGate(inbound.client_ip)
    try:
        key = await authenticate(inbound)
    except ApplicationError as error:
        return error_reply(await gate.refusal() or error)
    call = Call(inbound, key, endpoint, gate)
    try:
        require_scope(key, INFERENCE_SCOPE)
        reply = await work(call)
        reply.headers.update(call.headers)
        return reply
    except ApplicationError as error:  # a ProviderError included
        if call.admission is None:
            # Refused before admission (bad body, unknown model): the key's windows are read
            # without counting, for the headers every /v1 answer to a key carries.
            refusal, headers = await _peek(key, gate)
        else:
            refusal, headers = await gate.refusal(), call.headers
        if refusal is not None:
            return error_reply(refusal)
        reply = error_reply(error, headers)
        reply.after = partial(call.record, error.status, error_code=error.code)
        return reply
    except BaseException as error:
        # A bug (500) or the client hanging up (cancelled): still one event for the request.
        status = CLIENT_CLOSED if isinstance(error, asyncio.CancelledError) else 500
        await asyncio.shield(call.record(status))
        raise


async def _peek(key, gate: IpGate) -> tuple[ApplicationError | None, dict[str, str]]:
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


def _model_object(spec: ModelSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "aibaas"}


async def _informational(inbound: Inbound, answer: Callable[[Any], Awaitable[Reply]]) -> Reply:
    """A GET of the inference scope that counts against nothing: auth, per-IP check, headers."""
    gate = IpGate(inbound.client_ip)
    try:
        key = await authenticate(inbound)
        require_scope(key, INFERENCE_SCOPE)
    except ApplicationError as error:
        return error_reply(await gate.refusal() or error)
    refusal, headers = await _peek(key, gate)
    if refusal is not None:
        return error_reply(refusal)
    try:
        reply = await answer(key)
    except ApplicationError as error:
        return error_reply(error, headers)
    reply.headers.update(headers)
    return reply


async def models_list(inbound: Inbound) -> Reply:
    """GET /v1/models: the models this key may use, in OpenAI's list shape."""

    async def answer(key) -> Reply:
        specs = sorted(await amodels_for_key(key), key=lambda spec: spec.name)
        return Reply(body={"object": "list", "data": [_model_object(spec) for spec in specs]})

    return await _informational(inbound, answer)


async def models_retrieve(inbound: Inbound, name: str) -> Reply:
    """GET /v1/models/{model}: one model this key may use (the SDK's models.retrieve)."""

    async def answer(key) -> Reply:
        for spec in await amodels_for_key(key):
            if spec.name == name:
                return Reply(body=_model_object(spec))
        raise _model_not_found(name)

    return await _informational(inbound, answer)


async def chat(inbound: Inbound) -> Reply:
    """POST /v1/chat/completions."""

    async def work(call: Call) -> Reply:
        body = _body(inbound)
        call.model = _call_model(body)
        name = validation.validate_chat(body)
        spec = await _model(call, name, "chat")
        prompt = count_chat_tokens(body.get("messages") or [])
        await call.admit(estimate_chat_tokens(body, spec.context_window, prompt=prompt), prompt)
        provider = provider_for(spec)
        if body.get("stream"):
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
        result = await provider.chat(spec, body)
        headers = {}
        if key is not None:
            headers["X-Cache"] = "MISS"
            await response_cache.aset(key, result, spec.response_cache_ttl)
        return Reply(
            body=result.body,
            headers=headers,
            after=partial(
                call.record, 200, result.usage, upstream_latency_ms=result.upstream_latency_ms
            ),
        )

    return await _run(inbound, CHAT, work)


async def embeddings(inbound: Inbound) -> Reply:
    """POST /v1/embeddings."""

    async def work(call: Call) -> Reply:
        body = _body(inbound)
        call.model = _call_model(body)
        name = validation.validate_embeddings(body)
        spec = await _model(call, name, "embeddings")
        tokens = estimate_embedding_tokens(body)
        await call.admit(tokens, tokens)
        result = await provider_for(spec).embeddings(spec, body)
        return Reply(
            body=result.body,
            after=partial(
                call.record, 200, result.usage, upstream_latency_ms=result.upstream_latency_ms
            ),
        )

    return await _run(inbound, EMBEDDINGS, work)
