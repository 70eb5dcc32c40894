"""The tokens a request is billed for: the upstream's usage when it is believable, else ours.

Without valid upstream usage (absent, or numbers that are not integers in
0..MAX_REPORTED_TOKENS), tokens are counted with the gateway's tokenizer and marked estimated,
and the client gets those numbers (its usage chunk or `usage` member is always what is
recorded).
"""

import secrets
import time
from typing import Any

from aibaas.gateway.providers.base import Usage

# Reported token counts above this are nonsense (no request comes near): treated as absent.
MAX_REPORTED_TOKENS = 10**9
# A chat request has at least one message: an upstream that reports no prompt tokens for it
# does not count them (some report zeros), and is estimated like one that reports nothing.
CHAT_MIN_PROMPT_TOKENS = 1


def _estimate_chat(body: dict[str, Any], completion_text: str) -> Usage:
    from aibaas.gateway.tokenizer import count_chat_tokens, count_tokens

    return Usage(
        input_tokens=count_chat_tokens(body.get("messages") or []),
        output_tokens=count_tokens(completion_text),
        estimated=True,
    )


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS  # not bool, not float


def _usage_from(payload: dict[str, Any], *, min_prompt: int = 0) -> Usage | None:
    """The upstream's usage, or None when absent or not believable (negative, not integers,
    huge, fewer than `min_prompt` prompt tokens): such numbers would be relayed, fail the usage
    event's validation and settle the rate limits negative."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not (_is_count(prompt) and _is_count(completion)) or prompt < min_prompt:
        return None
    if "total_tokens" in usage and not _is_count(usage["total_tokens"]):
        return None
    return Usage(input_tokens=prompt, output_tokens=completion, estimated=False)


def _chat_usage(usage: Usage) -> dict[str, int]:
    """OpenAI's usage object for what is recorded."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _usage_chunk(model_name: str, stream_id: Any, created: Any, usage: Usage) -> dict[str, Any]:
    """OpenAI's usage chunk for what is recorded, sent before [DONE] when the client asked for
    usage and the upstream gave none that counts; with the stream's id and created when the
    upstream sent usable ones."""
    return {
        "id": stream_id if isinstance(stream_id, str) else f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion.chunk",
        "created": created if type(created) is int else int(time.time()),
        "model": model_name,
        "choices": [],
        "usage": _chat_usage(usage),
    }
