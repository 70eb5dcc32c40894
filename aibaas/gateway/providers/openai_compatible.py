"""The OpenAI-compatible upstream provider: vLLM, Ollama, llama.cpp's server, OpenAI itself.

- One pooled aiohttp `ClientSession` per event loop, keep-alive connections per upstream.
  (httpx was measured first: its connection pool collapses under concurrency on this machine,
  ~260 requests/s at 32 concurrent requests against a fake upstream that serves 6,700/s, where
  aiohttp does ~3,400/s; the gateway's budget is 1,000/s through it. See `make bench`.)
- Weighted random choice among the model's healthy upstreams; the others follow as fallbacks.
  An upstream that failed (connection error, an operator-side HTTP error, a stream request
  answered without an event stream) is skipped for UNHEALTHY_SECONDS unless nothing else is left.
- Upstream HTTP errors are split by whose fault they are. 400, 413 and 422 concern the
  customer's request (context length exceeded, ...): our 400 invalid_request_error with the
  upstream's `message` and `param`, no fallback. Every other 4xx (401, 403, 404, 429, ...) and
  every 5xx is the operator's side (a wrong key or model name, a rate-limited or broken model
  server): logged at warning, and answered with a generic 502 upstream_error that names the HTTP
  status only (the upstream's body and headers may hold account details and never reach a
  customer). Those, connection errors and a stream request answered with something that is not
  `text/event-stream` are retried on the next upstream before the first byte; a single-upstream
  model is retried once after a connection error or 5xx (asking again after a 4xx would only
  get the same answer). A read timeout is final: 504 upstream_timeout (retrying a hung upstream
  would only double the wait).
- Streaming is passed through event by event as it arrives, with the model name rewritten to
  the public one. The upstream is always asked for `stream_options.include_usage`; its usage
  chunk is forwarded only if the client asked for it. Without valid upstream usage (absent, or
  numbers that are not integers in 0..MAX_REPORTED_TOKENS), tokens are counted with the
  gateway's tokenizer and marked estimated, and the client gets those numbers (its usage chunk
  or `usage` member is always what is recorded). A stream must end with `data: [DONE]`: one
  that closes without it, or sends an error event, is a 502 after the chunks already relayed.
  If the client goes away, the upstream stream is closed and the usage of what was sent is kept.
- Provider keys come from the environment variable the upstream names, never the database.
"""

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from aibaas.errors import ApplicationError
from aibaas.gateway.providers.base import (
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    ModelSpec,
    ProviderError,
    ProviderResult,
    StreamUsage,
    UpstreamSpec,
    Usage,
)

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
UPSTREAM_FAILED = "The model server answered HTTP {status}; the operator has been notified."
UPSTREAM_REFUSED = "The model server refused the request (HTTP {status})."
NOT_AN_EVENT_STREAM = "The model server did not answer with an event stream."
STREAM_CUT_SHORT = "The model server ended the stream before its end."
STREAM_FAILED = "The model server failed mid-stream; the operator has been notified."
UNHEALTHY_SECONDS = 10.0
MAX_CONNECTIONS = 1000
# Upstream answers that concern the customer's request: passed on as our 400, no fallback.
# Every other 4xx and every 5xx is the operator's side.
CUSTOMER_SIDE = frozenset({400, 413, 422})
# Reported token counts above this are nonsense (no request comes near): treated as absent.
MAX_REPORTED_TOKENS = 10**9
# A chat request has at least one message: an upstream that reports no prompt tokens for it
# does not count them (some report zeros), and is estimated like one that reports nothing.
CHAT_MIN_PROMPT_TOKENS = 1
# What is read of an operator-side error body for the log, and how long it may take.
LOGGED_BODY_BYTES = 2048
LOGGED_BODY_SECONDS = 1.0

# event loop id -> session. A session belongs to the loop that made it.
_sessions: dict[int, aiohttp.ClientSession] = {}
# base url -> monotonic time until which the upstream counts as unhealthy
_unhealthy_until: dict[str, float] = {}

# Errors that mean "this upstream did not take the request": try the next one.
_CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)


def _session() -> aiohttp.ClientSession:
    loop_id = id(asyncio.get_running_loop())
    session = _sessions.get(loop_id)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300
        )
        session = _sessions[loop_id] = aiohttp.ClientSession(
            connector=connector, raise_for_status=False, auto_decompress=True
        )
    return session


async def close_sessions() -> None:
    """Close the session of the running loop (tests, shutdown)."""
    session = _sessions.pop(id(asyncio.get_running_loop()), None)
    if session is not None:
        await session.close()


def _headers(upstream: UpstreamSpec) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    secret = os.environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


def _timeout(upstream: UpstreamSpec) -> aiohttp.ClientTimeout:
    # sock_read bounds the wait for the first byte and then between bytes (a hung upstream).
    return aiohttp.ClientTimeout(
        total=None,
        connect=upstream.connect_timeout_seconds,
        sock_read=upstream.timeout_seconds,
    )


def attempt_order(upstreams: tuple[UpstreamSpec, ...], rng=random) -> list[UpstreamSpec]:
    """Healthy upstreams in weighted random order, then the unhealthy ones; a lone upstream
    is tried twice (one retry)."""
    now = time.monotonic()
    healthy = [u for u in upstreams if _unhealthy_until.get(u.base_url, 0.0) <= now]
    sick = [u for u in upstreams if u not in healthy]
    ordered: list[UpstreamSpec] = []
    pool = list(healthy)
    while pool:
        pick = rng.choices(pool, weights=[max(1, u.weight) for u in pool])[0]
        ordered.append(pick)
        pool.remove(pick)
    ordered.extend(sick)
    if len(ordered) == 1:
        ordered.append(ordered[0])
    return ordered


def _mark(upstream: UpstreamSpec, healthy: bool) -> None:
    if healthy:
        _unhealthy_until.pop(upstream.base_url, None)
    else:
        _unhealthy_until[upstream.base_url] = time.monotonic() + UNHEALTHY_SECONDS


def _unreachable() -> ProviderError:
    return ProviderError(UPSTREAM_ERROR, "The model server is unreachable.", 502)


def _timed_out() -> ProviderError:
    return ProviderError(UPSTREAM_TIMEOUT, "The model server did not answer in time.", 504)


def _refused(status: int, text: str) -> ApplicationError:
    """400/413/422 from the upstream: the customer's request is at fault. Its message (and
    param) are passed on as our 400; a body that is not an OpenAI-shaped error (an HTML page
    of a proxy) is not, only its status."""
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
        INVALID_REQUEST, message[:500], param=param[:200] if isinstance(param, str) else None
    )


# Key-like tokens an upstream may echo (OpenAI masks them, others may not).
_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk|key)[-_][A-Za-z0-9_\-*]{6,}|(?<=Bearer )[\w.~+/=\-*]+")


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


async def _open(
    model: ModelSpec, path: str, body: dict[str, Any], *, stream: bool = False
) -> tuple[aiohttp.ClientResponse, float]:
    """Send to the first upstream that takes the request and answers 2xx/3xx (with an event
    stream when `stream`); return the open response (the caller reads and releases it) and
    the time to its headers in ms. Raises ApplicationError for a customer-side refusal."""
    last_error: ProviderError | None = None
    done_with: set[UpstreamSpec] = set()  # asking these again would get the same answer
    for upstream in attempt_order(model.upstreams):
        if upstream in done_with:
            continue
        payload = json.dumps(dict(body, model=upstream.upstream_model))
        started = time.perf_counter()
        try:
            response = await _session().post(
                upstream.base_url.rstrip("/") + path,
                data=payload,
                headers=_headers(upstream),
                timeout=_timeout(upstream),
            )
        except _CONNECT_ERRORS:
            _mark(upstream, healthy=False)
            last_error = _unreachable()
            continue
        except TimeoutError:
            raise _timed_out() from None
        status = response.status
        if status in CUSTOMER_SIDE:
            _mark(upstream, healthy=True)
            raise _refused(status, await _read_text(response))
        if status >= 400:
            _mark(upstream, healthy=False)
            last_error = await _operator_side(upstream, response)
            if status < 500:
                done_with.add(upstream)
            continue
        if stream and response.content_type != "text/event-stream":
            response.close()
            _mark(upstream, healthy=False)
            logger.warning(
                "upstream %s answered a stream request with %s, not an event stream",
                _where(upstream),
                response.content_type,
            )
            last_error = ProviderError(UPSTREAM_ERROR, NOT_AN_EVENT_STREAM, 502)
            done_with.add(upstream)
            continue
        _mark(upstream, healthy=True)
        return response, (time.perf_counter() - started) * 1000
    raise last_error or ProviderError(UPSTREAM_ERROR, "No model server is configured.", 502)


async def _read_text(response: aiohttp.ClientResponse) -> str:
    try:
        return await response.text()
    except TimeoutError:
        raise _timed_out() from None
    except aiohttp.ClientError:
        raise ProviderError(UPSTREAM_ERROR, "The model server broke the connection.", 502) from None
    finally:
        response.release()


async def _read_json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await _read_text(response)
    try:
        payload = json.loads(text)
    except ValueError:
        raise ProviderError(UPSTREAM_ERROR, "The model server sent invalid JSON.", 502) from None
    if not isinstance(payload, dict):
        raise ProviderError(UPSTREAM_ERROR, "The model server sent an unexpected body.", 502)
    return payload


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


def _contents(chunk: Any) -> list[str]:
    if not isinstance(chunk, dict):
        return []
    return [
        content
        for choice in chunk.get("choices") or []
        if isinstance(choice, dict)
        and isinstance(choice.get("delta"), dict)
        and (content := choice["delta"].get("content"))
        and isinstance(content, str)
    ]


# The largest event (one SSE line) relayed from an upstream: a model server that sends more
# without a line break is broken or hostile, and is not buffered without end.
MAX_EVENT_BYTES = 4 * 1024 * 1024


def _model_renames(model: ModelSpec) -> list[tuple[bytes, bytes]]:
    """(upstream `"model"` member, ours) for each upstream name, in both common spellings."""
    public = json.dumps(model.name).encode()
    renames = []
    for name in {upstream.upstream_model for upstream in model.upstreams}:
        quoted = json.dumps(name).encode()
        renames.append((b'"model":' + quoted, b'"model":' + public))
        renames.append((b'"model": ' + quoted, b'"model":' + public))
    return renames


def _renamed(data: bytes, renames: list[tuple[bytes, bytes]]) -> bytes | None:
    """A content chunk with its model renamed without a JSON round trip, or None when the chunk
    needs the full path (it carries usage, or its model is not spelled as expected).

    Most chunks of a stream are content chunks: skipping json.loads/dumps for them halves the
    relay's CPU per chunk (`make bench`, 500 concurrent streams). A `"usage"` inside generated
    text is escaped (`\\"usage\\"`) and cannot match."""
    if b'"usage"' in data or not (data.startswith(b"{") and data.endswith(b"}")):
        return None
    for theirs, ours in renames:
        if data.count(theirs) == 1:
            return data.replace(theirs, ours)
    return None


class OpenAICompatibleProvider:
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

    async def chat_stream(
        self, model: ModelSpec, body: dict[str, Any], usage: StreamUsage
    ) -> AsyncIterator[bytes]:
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        upstream_body = dict(
            body,
            stream=True,
            stream_options={**(body.get("stream_options") or {}), "include_usage": True},
        )
        response, latency = await _open(model, "/chat/completions", upstream_body, stream=True)
        usage.upstream_latency_ms = latency
        reported = False  # the upstream sent valid usage (else it is estimated at the end)
        failed = False  # the upstream sent an error event: the stream ends there
        completion: list[str] = []
        unparsed: list[bytes] = []  # fast-path chunks: parsed only if usage must be estimated
        identity: dict[str, Any] = {}  # id and created of the stream, for our usage chunk
        renames = _model_renames(model)

        def parsed(chunk: dict[str, Any]) -> None:
            if not identity:
                identity.update(id=chunk.get("id"), created=chunk.get("created"))
            completion.extend(_contents(chunk))

        def completion_text() -> str:
            for data in unparsed:
                with contextlib.suppress(ValueError):  # forwarded as it came; counts for nothing
                    chunk = json.loads(data)
                    if isinstance(chunk, dict):
                        parsed(chunk)
            unparsed.clear()
            return "".join(completion)

        def relay(data: bytes) -> bytes | None:
            """One event's data, as the client gets it (None: not forwarded)."""
            nonlocal reported, failed
            fast = _renamed(data, renames)
            if fast is not None:
                unparsed.append(data)
                return b"data: " + fast + b"\n\n"
            try:
                chunk = json.loads(data)
            except ValueError:
                return None  # not an event we understand: never forward garbage
            if not isinstance(chunk, dict):
                return None
            if "error" in chunk or chunk.get("object") == "error":  # vLLM's older shape
                # Its message is the operator's business (it may name the machine, the
                # account): logged here, and the client gets our generic error event.
                logger.warning(
                    "upstream of %s sent an error event: %s",
                    model.name,
                    " ".join(data.decode(errors="replace").split())[:500],
                )
                failed = True
                return None
            upstream_usage = _usage_from(chunk, min_prompt=CHAT_MIN_PROMPT_TOKENS)
            if upstream_usage is not None:
                usage.usage = upstream_usage
                reported = True
            parsed(chunk)
            if chunk.get("usage") is not None and (
                upstream_usage is None or not client_wants_usage
            ):
                # Not asked for, or nonsense that is neither recorded nor relayed (our
                # estimate goes out before [DONE] instead).
                del chunk["usage"]
                if not chunk.get("choices"):
                    return None
            elif not client_wants_usage:
                chunk.pop("usage", None)
            chunk["model"] = model.name
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        def done() -> bytes:
            """The end of a complete stream: [DONE], after our usage chunk when the client
            asked for usage and the upstream gave none that counts."""
            usage.finished = True
            if reported:
                return b"data: [DONE]\n\n"
            usage.usage = _estimate_chat(body, completion_text())
            if not client_wants_usage:
                return b"data: [DONE]\n\n"
            stream_id, created = identity.get("id"), identity.get("created")
            chunk = {  # OpenAI's usage chunk
                "id": stream_id
                if isinstance(stream_id, str)
                else f"chatcmpl-{secrets.token_hex(12)}",
                "object": "chat.completion.chunk",
                "created": created if type(created) is int else int(time.time()),
                "model": model.name,
                "choices": [],
                "usage": _chat_usage(usage.usage),
            }
            return (
                b"data: "
                + json.dumps(chunk, separators=(",", ":")).encode()
                + b"\n\ndata: [DONE]\n\n"
            )

        # What the upstream sent in one read goes to the client in one write: the events are
        # split here (bytes.split) instead of one aiohttp readline per line, blank ones
        # included, and one uvicorn send per event.
        pending = b""
        try:
            async for received in response.content.iter_any():
                lines = (pending + received).split(b"\n")
                pending = lines.pop()  # an incomplete line waits for the next read
                out: list[bytes] = []
                for raw_line in lines:
                    if not raw_line.startswith(b"data:"):
                        continue
                    data = raw_line[5:].strip()
                    if data == b"[DONE]":
                        out.append(done())
                        break
                    event = relay(data)
                    if event is not None:
                        out.append(event)
                    elif failed:
                        break
                if out:
                    yield b"".join(out)
                if usage.finished:
                    break
                if failed:
                    raise ProviderError(UPSTREAM_ERROR, STREAM_FAILED, 502)
                if len(pending) > MAX_EVENT_BYTES:
                    raise ProviderError(
                        UPSTREAM_ERROR, "The model server sent an event too large to relay.", 502
                    )
            else:
                # The upstream closed: its last line may lack the newline.
                data = pending.strip()[5:].strip() if pending.startswith(b"data:") else b""
                if data == b"[DONE]":
                    yield done()
                else:
                    if data and (event := relay(data)) is not None:
                        yield event
                    # A stream without [DONE] is cut short, whatever it sent: not relayed as
                    # complete (the chunks sent so far are billed, estimated if need be).
                    raise ProviderError(
                        UPSTREAM_ERROR, STREAM_FAILED if failed else STREAM_CUT_SHORT, 502
                    )
        except TimeoutError:
            raise ProviderError(
                UPSTREAM_TIMEOUT, "The model server stopped answering.", 504
            ) from None
        except aiohttp.ClientError:
            raise ProviderError(UPSTREAM_ERROR, "The model server broke the stream.", 502) from None
        finally:
            if usage.finished:
                response.release()  # back to the pool for the next request
            else:
                response.close()  # the client left or the stream broke: drop the connection
            if not usage.finished and not reported:
                # The client hung up or the upstream broke: bill what was produced so far.
                usage.usage = _estimate_chat(body, completion_text())
