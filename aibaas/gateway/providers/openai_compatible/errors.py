"""What the customer gets, and what the operator's log gets, when an upstream fails.

Upstream HTTP errors are split by whose fault they are. 400, 413 and 422 concern the customer's
request (context length exceeded, ...): our 400 invalid_request_error with the upstream's
`message` (without keys, account ids or the upstream's address, and with the upstream's model
name replaced by the public one) and `param`, no fallback. Every other 4xx (401, 403, 404, 429,
...) and every 5xx is the operator's side (a wrong key or model name, a rate-limited or broken
model server): logged at warning, and answered with a generic 502 upstream_error that names the
HTTP status only (the upstream's body and headers may hold account details and never reach a
customer). The log gets the start of the body on one line, with the provider key, and anything
that looks like a key, masked. Which failures are retried on another upstream is decided in
`upstreams`.
"""

import asyncio
import json
import logging
import os
import re

import aiohttp
from yarl import URL

from aibaas.gateway.providers.base import (
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    ProviderError,
    UpstreamSpec,
)
from infra.errors import INVALID_REQUEST, ApplicationError

# The package's name, as before it was split: log configuration and filters keep working.
logger = logging.getLogger(__package__)

UPSTREAM_FAILED = "The model server answered HTTP {status}; the operator has been notified."
UPSTREAM_REFUSED = "The model server refused the request (HTTP {status})."
NOT_AN_EVENT_STREAM = "The model server did not answer with an event stream."
STREAM_CUT_SHORT = "The model server ended the stream before its end."
STREAM_FAILED = "The model server failed mid-stream; the operator has been notified."
# Upstream answers that concern the customer's request: passed on as our 400, no fallback.
# Every other 4xx and every 5xx is the operator's side.
CUSTOMER_SIDE = frozenset({400, 413, 422})
# What is read of an operator-side error body for the log, and how long it may take.
LOGGED_BODY_BYTES = 2048
LOGGED_BODY_SECONDS = 1.0


def _unreachable() -> ProviderError:
    return ProviderError(UPSTREAM_ERROR, "The model server is unreachable.", 502)


def _timed_out() -> ProviderError:
    return ProviderError(UPSTREAM_TIMEOUT, "The model server did not answer in time.", 504)


def _refused(status: int, text: str, upstream: UpstreamSpec, public_model: str) -> ApplicationError:
    """400/413/422 from the upstream: the customer's request is at fault. Its message (and
    param) are passed on as our 400, cleaned of what is the operator's business (`_told`); a
    body that is not an OpenAI-shaped error (an HTML page of a proxy) is not, only its
    status."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    # OpenAI, llama.cpp and newer vLLM: {"error": {"message", "param"}}; older vLLM has the
    # members at the top; Ollama may send {"error": "text"}.
    error = payload.get("error", payload) if isinstance(payload, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message.strip():
        return ApplicationError(INVALID_REQUEST, UPSTREAM_REFUSED.format(status=status))
    param = error.get("param")
    return ApplicationError(
        INVALID_REQUEST,
        _told(upstream, message, public_model)[:500],
        param=param[:200] if isinstance(param, str) else None,
    )


# Key-like tokens an upstream may echo (OpenAI masks them, others may not).
_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk|key)[-_][A-Za-z0-9_\-*]{6,}|(?<=Bearer )[\w.~+/=\-*]+")
# Account and project ids of hosted providers (OpenAI's org-..., proj-..., ...).
_ACCOUNT_LIKE = re.compile(r"\b(?:org|proj|project|user|acct|account)[-_][A-Za-z0-9_\-]{6,}")


def _told(upstream: UpstreamSpec, text: str, public_model: str) -> str:
    """An upstream's message as a customer may read it: without the provider key (ours, or
    anything that looks like a key), account ids, the upstream's address, and with the
    upstream's model name replaced by the public one the customer asked for."""
    secret = os.environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
    if secret:
        text = text.replace(secret, "***")
    base = URL(upstream.base_url)
    addresses = {upstream.base_url.rstrip("/"), str(base.with_user(None).origin()), base.host}
    for where in sorted(filter(None, addresses), key=len, reverse=True):  # the longest first
        text = text.replace(where, "the model server")
    if len(upstream.upstream_model) >= 3 and upstream.upstream_model != public_model:
        text = text.replace(upstream.upstream_model, public_model)
    return _ACCOUNT_LIKE.sub("***", _KEY_LIKE.sub("***", " ".join(text.split())))


def _loggable(upstream: UpstreamSpec, text: str) -> str:
    """An upstream's error body for the operator's log: short, on one line, without the
    provider key (ours, or anything that looks like one)."""
    secret = os.environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", " ".join(text.split()))[:500]


def _where(upstream: UpstreamSpec) -> str:
    return f"{URL(upstream.base_url).with_user(None)} ({upstream.upstream_model})"


async def _operator_side(upstream: UpstreamSpec, response: aiohttp.ClientResponse) -> ProviderError:
    """Log an upstream's operator-side HTTP error with (the start of) its body; release it."""
    try:
        async with asyncio.timeout(LOGGED_BODY_SECONDS):
            head = await response.content.read(LOGGED_BODY_BYTES)
    except (TimeoutError, aiohttp.ClientError):
        head = b""
    finally:
        response.release()
    logger.warning(
        "upstream %s answered HTTP %s: %s",
        _where(upstream),
        response.status,
        _loggable(upstream, head.decode(errors="replace")),
    )
    return ProviderError(UPSTREAM_ERROR, UPSTREAM_FAILED.format(status=response.status), 502)
