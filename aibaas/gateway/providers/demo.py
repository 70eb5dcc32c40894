"""The built-in demo provider: a chat model and an embeddings model with no network, no weights,
so that a fresh installation answers real OpenAI clients at once, like a real model over the
wire.

- chat: a few English sentences from a small vocabulary, seeded by a hash of the messages and
  sampling parameters (same request, same answer) and mentioning the last user message's
  topic; honours max_completion_tokens / max_tokens ("length"), `stop`, `n`, and streams one
  chunk per token (DEMO_TOKEN_DELAY_SECONDS apart).
- embeddings: unit vectors from feature hashing the words plus a component seeded by the text.
Token counts are aibaas/gateway/tokenizer.py's, exact for this model (never marked estimated).
The body was validated by the /v1 handler; this module only reads it, defensively.
"""

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from aibaas.gateway.models import DEFAULT_EMBEDDING_DIMENSIONS
from aibaas.gateway.providers.base import ModelSpec, ProviderResult, StreamUsage, Usage
from aibaas.gateway.tokenizer import count_chat_tokens, count_tokens, tokenize
from aibaas.gateway.validation import MAX_N, invalid

FINGERPRINT = "fp_aibaas_demo"
# Request fields that change the answer; max_tokens only cuts it (a cut answer is a prefix).
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")

_OPENERS = (
    "Good question about {t}.",
    "Here is a short take on {t}.",
    "Let us look at {t}.",
    "Thanks for asking about {t}.",
    "A few points stand out on {t}.",
    "Sure, we can talk about {t}.",
)
_SUBJECTS = (
    "the main idea", "a simple plan", "the best first step", "most teams", "a small test",
    "the data", "a clear goal", "good tooling", "each change", "the simple path",
)  # fmt: skip
_VERBS = ("helps", "shows", "keeps", "makes", "needs", "finds", "gives", "brings", "builds")
_OBJECTS = (
    "the work simple", "each step clear", "a lot of time", "the risk low", "the next move",
    "a clean result", "the right trade", "a solid base", "the cost down", "room to grow",
)  # fmt: skip
_TAILS = ("in most cases", "over time", "for a start", "when you test it", "with some care")
_LINKS = ("Also,", "In short,", "Still,", "Then", "In practice,", "For {t},")
_CLOSERS = (
    "I am the demo model of aibaas, so take this as a sample answer.",
    "This answer comes from the aibaas demo model.",
    "Ask again in other words and the answer will change.",
)
_STOPWORDS_TEXT = """
    the and for are but not you your with this that what how why who can could would should
    about into from have has had was were will just like please tell give me some any all
    does did its our out get use using there their them then than when where which
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_TOPIC_WORD = re.compile(r"[A-Za-z]{3,24}")
_EMBED_WORD = re.compile(r"[a-z0-9]+")


def _hash_int(*parts: Any) -> int:
    data = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:16], "big")


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, list):
        return " ".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return content if isinstance(content, str) else ""


def _topic(messages: list) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    words: list[str] = []
    for word in _TOPIC_WORD.findall(_message_text(users[-1]) if users else ""):
        word = word.lower()
        if word not in _STOPWORDS and word not in words:
            words.append(word)
    return " and ".join(words[:2]) or "your message"


def _sentence(rng: random.Random, topic: str) -> str:
    words = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.5:
        words += " " + rng.choice(_TAILS)
    if rng.random() < 0.4:
        words = rng.choice(_LINKS).format(t=topic) + " " + words
    return words[0].upper() + words[1:] + "."


def compose_answer(rng: random.Random, topic: str) -> str:
    """A short answer of 2 paragraphs: opener, sentences, a closing remark."""
    first = [rng.choice(_OPENERS).format(t=topic)]
    first += [_sentence(rng, topic) for _ in range(rng.randint(2, 4))]
    second = [_sentence(rng, topic) for _ in range(rng.randint(1, 3))] + [rng.choice(_CLOSERS)]
    return " ".join(first) + "\n\n" + " ".join(second)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _answers(model: ModelSpec, body: dict[str, Any]) -> tuple[int, list[tuple[list[str], str]]]:
    """(prompt tokens, [(the answer's token pieces, finish_reason)] for each of n choices)."""
    messages = body.get("messages") or []
    n = min(max(1, _int_or_none(body.get("n")) or 1), MAX_N)
    limit = _int_or_none(body.get("max_completion_tokens"))
    if limit is None:
        limit = _int_or_none(body.get("max_tokens"))
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    seed = _hash_int(model.name, messages, {k: body.get(k) for k in _SAMPLING_FIELDS})
    topic = _topic(messages)
    answers = []
    for index in range(n):
        rng = random.Random(seed + index)  # noqa: S311 (a demo, not cryptography)
        text = compose_answer(rng, topic)
        finish = "stop"
        cut = min((text.find(s) for s in stops if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        pieces = tokenize(text)
        if limit is not None and len(pieces) > limit:
            pieces, finish = pieces[: max(limit, 0)], "length"
        answers.append((pieces, finish))
    return count_chat_tokens(messages), answers


def _usage_body(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector (float32 values) for `text`."""
    vector = [0.0] * dimensions
    words = _EMBED_WORD.findall(text.lower())
    for word in words:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        for offset in (0, 4):  # two buckets per word spread collisions
            bucket = int.from_bytes(digest[offset : offset + 3], "little") % dimensions
            vector[bucket] += 1.0 if digest[offset + 3] & 1 else -1.0
    # Seeded by the exact text: word order, case and punctuation still make a difference.
    rng = random.Random(_hash_int("embedding", text))  # noqa: S311
    noise = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    scale = 0.5 * math.sqrt(sum(v * v for v in vector) or 1.0) / math.sqrt(dimensions)
    vector = [v + scale * x for v, x in zip(vector, noise, strict=True)]
    norm = math.sqrt(sum(v * v for v in vector))
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in vector))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _embedding_inputs(raw: Any) -> list[tuple[str, int]]:
    """[(text to embed, its tokens)] from a string, a list of strings, token ids, or lists
    of token ids (OpenAI accepts all four)."""
    token_ids = isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw)
    if isinstance(raw, str) or token_ids:
        raw = [raw]
    inputs = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list):
            inputs.append((" ".join(str(i) for i in item), len(item)))
        else:
            inputs.append((str(item), count_tokens(str(item))))
    return inputs


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
        prompt, answers = _answers(model, body)
        longest = max(len(pieces) for pieces, _ in answers)
        if self.token_delay > 0:
            await asyncio.sleep(self.token_delay * longest)
        completion = sum(len(pieces) for pieces, _ in answers)
        response = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": FINGERPRINT,
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
        prompt, answers = _answers(model, body)
        usage.usage = Usage(input_tokens=prompt, output_tokens=0, estimated=False)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage")
        base = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": FINGERPRINT,
        }
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
        requested = _int_or_none(body.get("dimensions"))
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
        for index, (text, text_tokens) in enumerate(_embedding_inputs(body.get("input"))):
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
