"""The OpenAI-compatible upstream provider: vLLM, Ollama, llama.cpp's server, OpenAI itself.

- One pooled aiohttp `ClientSession` per event loop, keep-alive connections per upstream.
  (httpx was measured first: its connection pool collapses under concurrency on this machine,
  ~260 requests/s at 32 concurrent requests against a fake upstream that serves 6,700/s, where
  aiohttp does ~3,400/s; the gateway's budget is 1,000/s through it. See `make bench`.)
- Weighted random choice among the model's healthy upstreams; the others follow as fallbacks.
  An upstream that failed (connection error or 5xx) is skipped for UNHEALTHY_SECONDS unless
  nothing else is left.
- Connection errors and 5xx answers before the first byte are retried on the next upstream
  (a single-upstream model is retried once). A read timeout is final: 504 upstream_timeout
  (retrying a hung upstream would only double the wait).
- Streaming is passed through event by event as it arrives, with the model name rewritten to
  the public one. The upstream is always asked for `stream_options.include_usage`; its usage
  chunk is forwarded only if the client asked for it. Without upstream usage, tokens are
  counted with the gateway's tokenizer and marked estimated. If the client goes away, the
  upstream stream is closed and the usage of what was sent is kept.
- Provider keys come from the environment variable the upstream names, never the database.
"""

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from aibaas.gateway.providers.base import (
    ModelSpec,
    ProviderError,
    ProviderResult,
    StreamUsage,
    UpstreamSpec,
    Usage,
)

UPSTREAM_ERROR = "upstream_error"
UPSTREAM_TIMEOUT = "upstream_timeout"
UNHEALTHY_SECONDS = 10.0
MAX_CONNECTIONS = 1000

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


def _refused(status: int, text: str) -> ProviderError:
    """4xx from the upstream is the request's fault: pass its message on as a 400."""
    try:
        message = json.loads(text).get("error", {}).get("message") or text
    except (ValueError, AttributeError):
        message = text
    return ProviderError("invalid_request_error", f"Upstream refused: {message[:500]}", 400)


async def _open(
    model: ModelSpec, path: str, body: dict[str, Any]
) -> tuple[aiohttp.ClientResponse, float]:
    """Send to the first upstream that takes the request and answers below 500; return the
    open response (the caller reads and releases it) and the time to its headers in ms."""
    last_error: ProviderError | None = None
    for upstream in attempt_order(model.upstreams):
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
        if response.status >= 500:
            response.release()
            _mark(upstream, healthy=False)
            last_error = ProviderError(
                UPSTREAM_ERROR, f"The model server failed ({response.status}).", 502
            )
            continue
        _mark(upstream, healthy=True)
        return response, (time.perf_counter() - started) * 1000
    raise last_error or ProviderError(UPSTREAM_ERROR, "No model server is configured.", 502)


async def _read_json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        text = await response.text()
    except TimeoutError:
        raise _timed_out() from None
    except aiohttp.ClientError:
        raise ProviderError(UPSTREAM_ERROR, "The model server broke the connection.", 502) from None
    finally:
        response.release()
    if response.status >= 400:
        raise _refused(response.status, text)
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


def _usage_from(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(input_tokens=prompt, output_tokens=completion, estimated=False)


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
        usage = _usage_from(payload)
        if usage is None:
            text = "".join(
                (choice.get("message") or {}).get("content") or ""
                for choice in payload.get("choices") or []
                if isinstance(choice, dict)
            )
            usage = _estimate_chat(body, text)
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
        response, latency = await _open(model, "/chat/completions", upstream_body)
        if response.status >= 400:
            await _read_json(response)  # raises the upstream's refusal as a 400
        usage.upstream_latency_ms = latency
        completion: list[str] = []
        unparsed: list[bytes] = []  # fast-path chunks: parsed only if usage must be estimated
        renames = _model_renames(model)

        def completion_text() -> str:
            for data in unparsed:
                with contextlib.suppress(ValueError):  # forwarded as it came; counts for nothing
                    completion.extend(_contents(json.loads(data)))
            unparsed.clear()
            return "".join(completion)

        def relay(data: bytes) -> bytes | None:
            """One event's data, as the client gets it (None: not forwarded)."""
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
            reported = _usage_from(chunk)
            if reported is not None:
                usage.usage = reported
            completion.extend(_contents(chunk))
            if not client_wants_usage:
                if not chunk.get("choices") and reported is not None:
                    return None  # the usage-only chunk the client did not ask for
                chunk.pop("usage", None)
            chunk["model"] = model.name
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

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
                        usage.finished = True
                        if not usage.usage.input_tokens and not usage.usage.output_tokens:
                            usage.usage = _estimate_chat(body, completion_text())
                        out.append(b"data: [DONE]\n\n")
                        break
                    event = relay(data)
                    if event is not None:
                        out.append(event)
                if out:
                    yield b"".join(out)
                if usage.finished:
                    break
                if len(pending) > MAX_EVENT_BYTES:
                    raise ProviderError(
                        UPSTREAM_ERROR, "The model server sent an event too large to relay.", 502
                    )
            else:
                # The upstream closed: its last line may lack the newline.
                data = pending.strip()[5:].strip() if pending.startswith(b"data:") else b""
                if data == b"[DONE]":
                    usage.finished = True
                    if not usage.usage.input_tokens and not usage.usage.output_tokens:
                        usage.usage = _estimate_chat(body, completion_text())
                    yield b"data: [DONE]\n\n"
                elif data and (event := relay(data)) is not None:
                    yield event
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
            if not usage.finished and not usage.usage.input_tokens:
                # The client hung up or the upstream broke: bill what was produced so far.
                usage.usage = _estimate_chat(body, completion_text())
