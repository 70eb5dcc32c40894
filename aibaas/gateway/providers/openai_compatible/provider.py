"""The Provider of `openai_compatible` models."""

from collections.abc import AsyncIterator
from typing import Any

from aibaas.gateway.providers.base import ModelSpec, ProviderResult, StreamUsage, Usage
from aibaas.gateway.providers.openai_compatible.stream import relay_chat_stream
from aibaas.gateway.providers.openai_compatible.upstreams import _open, _read_json
from aibaas.gateway.providers.openai_compatible.usage import (
    CHAT_MIN_PROMPT_TOKENS,
    _chat_usage,
    _estimate_chat,
    _usage_from,
)


class OpenAICompatibleProvider:
    """Chat and embeddings from OpenAI-compatible model servers (vLLM, Ollama, llama.cpp's
    server, OpenAI itself), with the model name and usage the gateway records."""

    async def chat(self, model: ModelSpec, body: dict[str, Any]) -> ProviderResult:
        response, latency = await _open(model, "/chat/completions", dict(body, stream=False))
        payload = await _read_json(response)
        payload["model"] = model.name
        usage = _usage_from(payload, min_prompt=CHAT_MIN_PROMPT_TOKENS)
        if usage is None:
            text = "".join(
                content
                for choice in payload.get("choices") or []
                if isinstance(choice, dict)
                and isinstance(choice.get("message"), dict)
                and isinstance(content := choice["message"].get("content"), str)
            )
            usage = _estimate_chat(body, text)
            payload["usage"] = _chat_usage(usage)  # the client's usage is the one recorded
        return ProviderResult(body=payload, usage=usage, upstream_latency_ms=latency)

    async def embeddings(self, model: ModelSpec, body: dict[str, Any]) -> ProviderResult:
        response, latency = await _open(model, "/embeddings", body)
        payload = await _read_json(response)
        payload["model"] = model.name
        usage = _usage_from(payload)
        if usage is None:
            from aibaas.gateway.tokenizer import estimate_embedding_tokens

            counted = estimate_embedding_tokens(body)
            usage = Usage(input_tokens=counted, output_tokens=0, estimated=True)
            payload["usage"] = {"prompt_tokens": counted, "total_tokens": counted}
        return ProviderResult(body=payload, usage=usage, upstream_latency_ms=latency)

    def chat_stream(
        self, model: ModelSpec, body: dict[str, Any], usage: StreamUsage
    ) -> AsyncIterator[bytes]:
        # The relay's async generator itself: nothing in between per chunk.
        return relay_chat_stream(model, body, usage)
