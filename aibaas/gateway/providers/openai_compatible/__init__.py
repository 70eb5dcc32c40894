"""The OpenAI-compatible upstream provider: vLLM, Ollama, llama.cpp's server, OpenAI itself.

`provider` (chat and embeddings in one piece), `stream` (the SSE relay), `upstreams` (choice,
fallback, the one place that sends upstream), `errors` (whose fault, redaction, messages),
`usage` (the upstream's when believable, else estimated), `sessions` (aiohttp pools).

The names below are what the rest of the gateway and the tests use. The constants are here to
be read: a test that changes one patches the module that uses it (`stream.MAX_EVENT_BYTES`).
"""

import logging

from aibaas.gateway.providers.openai_compatible.errors import (
    CUSTOMER_SIDE,
    LOGGED_BODY_BYTES,
    LOGGED_BODY_SECONDS,
    NOT_AN_EVENT_STREAM,
    STREAM_CUT_SHORT,
    STREAM_FAILED,
    UPSTREAM_FAILED,
    UPSTREAM_REFUSED,
)
from aibaas.gateway.providers.openai_compatible.provider import OpenAICompatibleProvider
from aibaas.gateway.providers.openai_compatible.sessions import MAX_CONNECTIONS, close_sessions
from aibaas.gateway.providers.openai_compatible.stream import MAX_EVENT_BYTES
from aibaas.gateway.providers.openai_compatible.upstreams import (
    UNHEALTHY_SECONDS,
    attempt_order,
)
from aibaas.gateway.providers.openai_compatible.upstreams import (
    _unhealthy_until as _unhealthy_until,  # the tests reset upstream health through it
)
from aibaas.gateway.providers.openai_compatible.usage import (
    CHAT_MIN_PROMPT_TOKENS,
    MAX_REPORTED_TOKENS,
)

# The logger every module of the provider logs to (they name it by `__package__`).
logger = logging.getLogger(__name__)

__all__ = [
    "CHAT_MIN_PROMPT_TOKENS",
    "CUSTOMER_SIDE",
    "LOGGED_BODY_BYTES",
    "LOGGED_BODY_SECONDS",
    "MAX_CONNECTIONS",
    "MAX_EVENT_BYTES",
    "MAX_REPORTED_TOKENS",
    "NOT_AN_EVENT_STREAM",
    "STREAM_CUT_SHORT",
    "STREAM_FAILED",
    "UNHEALTHY_SECONDS",
    "UPSTREAM_FAILED",
    "UPSTREAM_REFUSED",
    "OpenAICompatibleProvider",
    "attempt_order",
    "close_sessions",
    "logger",
]
