"""Choosing and asking a model's upstreams: the one place that sends a request upstream.

Weighted random choice among the model's healthy upstreams, the others as fallbacks; one that
failed (connection error, operator-side HTTP error, a stream request answered without an event
stream) is skipped for UNHEALTHY_SECONDS unless nothing else is left. Those failures are retried
on the next upstream before the first byte (a single-upstream model: once, after a connection
error or 5xx). A customer-side refusal is passed on at once; a read timeout is final (504
upstream_timeout: retrying a hung upstream would only double the wait). Provider keys come from
the environment variable the upstream names, never the database.
"""

import json
import logging
import os
import random
import time
from typing import Any

import aiohttp
from yarl import URL

from aibaas.gateway.providers.base import UPSTREAM_ERROR, ModelSpec, ProviderError, UpstreamSpec
from aibaas.gateway.providers.openai_compatible.errors import (
    CUSTOMER_SIDE,
    NOT_AN_EVENT_STREAM,
    _operator_side,
    _refused,
    _timed_out,
    _unreachable,
    _where,
)
from aibaas.gateway.providers.openai_compatible.sessions import _session
from infra import metrics, tracing

# The package's name, as before it was split: log configuration and filters keep working.
logger = logging.getLogger(__package__)

UNHEALTHY_SECONDS = 10.0

# base url -> monotonic time until which the upstream counts as unhealthy
_unhealthy_until: dict[str, float] = {}

# Errors that mean "this upstream did not take the request": try the next one.
_CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)


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


def _label(upstream: UpstreamSpec) -> str:
    """The upstream in the metrics: host:port of its base URL (never its credentials)."""
    url = URL(upstream.base_url)
    return f"{url.host}:{url.port}"


# upstream -> (base URL, headers, timeout, metrics label): built once per upstream of a registry
# snapshot, not per request (the environment and the spec do not change while the process runs).
_options: dict[UpstreamSpec, tuple[str, dict[str, str], aiohttp.ClientTimeout, str]] = {}


def _request_options(
    upstream: UpstreamSpec,
) -> tuple[str, dict[str, str], aiohttp.ClientTimeout, str]:
    options = _options.get(upstream)
    if options is None:
        if len(_options) >= 1000:  # old snapshots' upstreams
            _options.clear()
        options = _options[upstream] = (
            upstream.base_url.rstrip("/"),
            _headers(upstream),
            _timeout(upstream),
            _label(upstream),
        )
    return options


def attempt_order(upstreams: tuple[UpstreamSpec, ...], rng=random) -> list[UpstreamSpec]:
    """Healthy upstreams in weighted random order, then the unhealthy ones; a lone upstream
    is tried twice (one retry)."""
    if len(upstreams) == 1:  # healthy or not, the lone one (most models): nothing to draw
        return [upstreams[0], upstreams[0]]
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


def _attempt_span(model: ModelSpec, upstream: UpstreamSpec, attempt: int):
    """The span of one attempt (a retry or fallback is another), a child of the provider
    call's; the aiohttp client's own span is its child."""
    if not tracing.on():
        return tracing.span("gateway.upstream.attempt")  # off: a shared null context
    return tracing.span(
        "gateway.upstream.attempt",
        {
            "aibaas.model": model.name,
            "aibaas.provider": "openai_compatible",
            "aibaas.upstream": str(URL(upstream.base_url).with_user(None)),
            "aibaas.upstream_model": upstream.upstream_model,
            "aibaas.attempt": attempt,
        },
    )


async def _open(
    model: ModelSpec, path: str, body: dict[str, Any], *, stream: bool = False
) -> tuple[aiohttp.ClientResponse, float]:
    """Send to the first upstream that takes the request and answers 2xx/3xx (with an event
    stream when `stream`); return the open response (the caller reads and releases it) and
    the time to its headers in ms. Raises ApplicationError for a customer-side refusal."""
    last_error: ProviderError | None = None
    done_with: set[UpstreamSpec] = set()  # asking these again would get the same answer
    for attempt, upstream in enumerate(attempt_order(model.upstreams), start=1):
        if upstream in done_with:
            continue
        with _attempt_span(model, upstream, attempt) as span:
            payload = json.dumps(dict(body, model=upstream.upstream_model)).encode()
            base, headers, timeout, label = _request_options(upstream)
            started = time.perf_counter()
            try:
                response = await _session().post(
                    base + path, data=payload, headers=headers, timeout=timeout
                )
            except _CONNECT_ERRORS:
                _mark(upstream, healthy=False)
                metrics.child(metrics.UPSTREAM_ERRORS, label, "unreachable").inc()
                last_error = _unreachable()
                tracing.annotate(span, {"aibaas.outcome": "unreachable"}, error="unreachable")
                continue
            except TimeoutError:
                metrics.child(metrics.UPSTREAM_ERRORS, label, "timeout").inc()
                raise _timed_out() from None
            seconds = time.perf_counter() - started
            metrics.child(metrics.UPSTREAM_DURATION, label).observe(seconds)
            status = response.status
            tracing.annotate(span, {"http.response.status_code": status})
            if status in CUSTOMER_SIDE:
                _mark(upstream, healthy=True)
                raise _refused(status, await _read_text(response), upstream, model.name)
            if status >= 400:
                _mark(upstream, healthy=False)
                metrics.child(metrics.UPSTREAM_ERRORS, label, f"http_{status}").inc()
                last_error = await _operator_side(upstream, response)
                tracing.annotate(span, {"aibaas.outcome": "failed"}, error=f"HTTP {status}")
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
                metrics.child(metrics.UPSTREAM_ERRORS, label, "not_event_stream").inc()
                last_error = ProviderError(UPSTREAM_ERROR, NOT_AN_EVENT_STREAM, 502)
                tracing.annotate(span, {"aibaas.outcome": "failed"}, error=NOT_AN_EVENT_STREAM)
                done_with.add(upstream)
                continue
            _mark(upstream, healthy=True)
            tracing.annotate(span, {"aibaas.outcome": "answered"})
            return response, seconds * 1000
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
