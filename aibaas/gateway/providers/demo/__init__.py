"""The built-in demo provider: a chat model and an embeddings model with no network, no weights,
so that a fresh installation answers real OpenAI clients at once, like a real model over the
wire. Answers: text.py (same request, same answer); vectors: vectors.py.

Streams send one chunk per token, DEMO_TOKEN_DELAY_SECONDS apart. Token counts are
aibaas/gateway/tokenizer.py's, exact for this model (never marked estimated). The body was
validated by the /v1 handler; this package only reads it, defensively.
"""

import asyncio
import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from aibaas.gateway.models import DEFAULT_EMBEDDING_DIMENSIONS
from aibaas.gateway.providers.base import ModelSpec, ProviderResult, StreamUsage, Usage
from aibaas.gateway.providers.demo.text import compose_answers, int_or_none
from aibaas.gateway.providers.demo.vectors import embedding_inputs, embedding_vector
from aibaas.gateway.validation import invalid

FINGERPRINT = "fp_aibaas_demo"


def _usage_body(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _envelope(model: ModelSpec, kind: str) -> dict[str, Any]:
    """The members every completion and chunk of one answer share."""
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": kind,
        "created": int(time.time()),
        "model": model.name,
        "system_fingerprint": FINGERPRINT,
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class DemoProvider:
    """The Provider (providers/base.py) for models whose provider is "demo"."""

    def __init__(self, token_delay: float | None = None) -> None:
        self._token_delay = token_delay

    @property
    def token_delay(self) -> float:
        if self._token_delay is not None:
            return self._token_delay
        return settings.DEMO_TOKEN_DELAY_SECONDS

    async def chat(self, model: ModelSpec, body: dict[str, Any]) -> ProviderResult:
        started = time.perf_counter()
        prompt, answers = compose_answers(model, body)
        longest = max(len(pieces) for pieces, _ in answers)
        if self.token_delay > 0:
            await asyncio.sleep(self.token_delay * longest)
        completion = sum(len(pieces) for pieces, _ in answers)
        response = {
            **_envelope(model, "chat.completion"),
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for index, (pieces, finish) in enumerate(answers)
            ],
            "usage": _usage_body(prompt, completion),
        }
        return ProviderResult(
            body=response,
            usage=Usage(input_tokens=prompt, output_tokens=completion, estimated=False),
            upstream_latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def chat_stream(
        self, model: ModelSpec, body: dict[str, Any], usage: StreamUsage
    ) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        prompt, answers = compose_answers(model, body)
        usage.usage = Usage(input_tokens=prompt, output_tokens=0, estimated=False)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage")
        base = _envelope(model, "chat.completion.chunk")
        extra = {"usage": None} if include_usage else {}

        def chunk(index: int, delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **extra})

        usage.upstream_latency_ms = (time.perf_counter() - started) * 1000
        for index in range(len(answers)):
            yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
        delay = self.token_delay
        for step in range(max(len(pieces) for pieces, _ in answers)):
            if delay > 0:
                await asyncio.sleep(delay)
            for index, (pieces, _) in enumerate(answers):
                if step < len(pieces):
                    # Counted before it is handed over: a hang-up right after is still billed.
                    usage.usage.output_tokens += 1
                    yield chunk(index, {"content": pieces[step]})
        for index, (_, finish) in enumerate(answers):
            yield chunk(index, {}, finish)
        if include_usage:
            completion = usage.usage.output_tokens
            yield _sse({**base, "choices": [], "usage": _usage_body(prompt, completion)})
        usage.finished = True
        yield b"data: [DONE]\n\n"

    async def embeddings(self, model: ModelSpec, body: dict[str, Any]) -> ProviderResult:
        started = time.perf_counter()
        dimensions = model.embedding_dimensions or DEFAULT_EMBEDDING_DIMENSIONS
        requested = int_or_none(body.get("dimensions"))
        if requested is not None:
            if not 1 <= requested <= dimensions:
                # OpenAI's rule: a shorter vector may be asked for, never a longer one.
                raise invalid(
                    "dimensions",
                    f"'dimensions' must be from 1 to {dimensions} for the model '{model.name}'.",
                )
            dimensions = requested
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for index, (text, text_tokens) in enumerate(embedding_inputs(body.get("input"))):
            vector = embedding_vector(text, dimensions)
            tokens += text_tokens
            embedding: list[float] | str = vector
            if as_base64:
                raw = struct.pack(f"<{dimensions}f", *vector)
                embedding = base64.b64encode(raw).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        response = {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return ProviderResult(
            body=response,
            usage=Usage(input_tokens=tokens, output_tokens=0, estimated=False),
            upstream_latency_ms=(time.perf_counter() - started) * 1000,
        )
