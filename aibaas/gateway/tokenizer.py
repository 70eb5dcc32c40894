"""The one tokenizer of aibaas: every token count the gateway makes itself comes from here.

An approximation of OpenAI's BPE tokenizers (cl100k/o200k): deterministic, no vocabulary file,
no download. One regular expression cuts text into pieces, each exactly one token (a short word
with its leading space, a 4-letter chunk of a long one, up to 3 digits, one other visible
character, up to 8 characters of whitespace). It errs towards over-counting, the safe side for
limits estimated before a call; upstreams that report usage are billed on their numbers.
Invariants: `count_tokens(text) == len(tokenize(text))`, and a prefix made of whole pieces
counts as that many tokens (the demo model streams and truncates with them).
The rules in full and their accuracy against cl100k: docs/tokenizer.md.
"""

import json
import re
from typing import Any

# Every match is exactly one token, so counting is one C-level pass (`subn`) and `tokenize`
# is `findall`. Alternatives, in order, each with at most one leading space glued on:
# a whole short word; else a 4-letter chunk of a long word; up to 3 digits; one other visible
# character. Whitespace left over goes in runs of up to 8.
# ({1,6}+ is possessive, Python 3.11+: no backtracking inside a word.)
_PIECE = re.compile(
    r"(?: ?(?:(?<![A-Za-z])[A-Za-z]{1,6}+(?![A-Za-z])|[A-Za-z]{1,4}+|[0-9]{1,3}+|[^\sA-Za-z0-9]))"
    r"|\s{1,8}+"
)

# OpenAI's documented chat overhead (the "How to count tokens" cookbook, gpt-3.5/4 family).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
IMAGE_PART_TOKENS = 85  # an image part at "low" detail


def count_tokens(text: str) -> int:
    """The number of tokens in `text` (see the module docstring). About 0.2-0.3 ms per 4 kB."""
    if not text:
        return 0
    return _PIECE.subn("", text)[1]


def tokenize(text: str) -> list[str]:
    """`text` cut into its tokens: "".join(tokenize(text)) == text and
    len(tokenize(text)) == count_tokens(text)."""
    return _PIECE.findall(text)


def _content_tokens(content: Any) -> int:
    """A message's content: a string, a list of parts (text, image_url, ...), or other JSON."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                total += count_tokens(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                total += IMAGE_PART_TOKENS
            else:
                total += count_tokens(json.dumps(part, ensure_ascii=False, sort_keys=True))
        return total
    return count_tokens(json.dumps(content, ensure_ascii=False, sort_keys=True))


def count_chat_tokens(messages: list[dict]) -> int:
    """The prompt tokens of a chat request, with OpenAI's per-message overhead.

    Each message costs TOKENS_PER_MESSAGE plus its role and content (and TOKENS_PER_NAME plus
    the name when it has one); tool calls and other fields count as their JSON text; the reply
    priming adds REPLY_PRIMING once.
    """
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            total += TOKENS_PER_MESSAGE + count_tokens(str(message))
            continue
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value)
            elif key == "name":
                total += TOKENS_PER_NAME + count_tokens(str(value))
            elif isinstance(value, str):
                total += count_tokens(value)
            elif value is not None:
                total += count_tokens(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return total


def estimate_chat_tokens(
    body: dict, context_window: int | None = None, *, prompt: int | None = None
) -> int:
    """A chat request's tokens before the call, for the token limits (settled afterwards with
    what the model really used): the prompt counted here, plus the output it may produce —
    `max_completion_tokens` or `max_tokens` when given, else GATEWAY_OUTPUT_TOKENS_ESTIMATE
    (256) — times `n`, capped at what the model's context window leaves after the prompt.
    `prompt`: the messages' count_chat_tokens, when the caller has it."""
    from django.conf import settings

    if prompt is None:
        prompt = count_chat_tokens(body.get("messages") or [])
    output = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(output, int) or output <= 0:
        output = settings.GATEWAY_OUTPUT_TOKENS_ESTIMATE
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
    if context_window:
        output = max(0, min(output, context_window - prompt))
    return prompt + output * n


def estimate_embedding_tokens(body: dict) -> int:
    """An embeddings request's tokens: its input, counted here (token-id lists by length)."""
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    if inputs and all(isinstance(i, int) for i in inputs):
        return len(inputs)  # one list of token ids
    return sum(count_tokens(i) if isinstance(i, str) else len(i or []) for i in inputs)
