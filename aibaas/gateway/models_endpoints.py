"""GET /v1/models and /v1/models/{model}: what a key may call, in OpenAI's shapes. They count
against nothing (no window, no quota, no usage event) but answer as every /v1 request does:
authentication, the inference scope, the per-IP check and the key's rate-limit headers."""

from collections.abc import Awaitable, Callable
from typing import Any

from aibaas.gateway.pipeline import (
    INFERENCE_SCOPE,
    Inbound,
    Reply,
    authenticate,
    error_reply,
    model_not_found,
    peek_limits,
)
from aibaas.gateway.providers.base import ModelSpec
from aibaas.gateway.registry import amodels_for_key
from infra.errors import ApplicationError
from keys.permissions import require_scope
from metering.admission import IpGate


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
    refusal, headers = await peek_limits(key, gate)
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
        raise model_not_found(name)

    return await _informational(inbound, answer)
