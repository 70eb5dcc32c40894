"""The /v1 series of infra/metrics.py, observed once per request from its request-log entry
(aibaas/gateway/request_log.py), and the series read at each scrape (the usage stream's length,
where this process's limiter counts).

Labels stay bounded: a model the registry did not know is "other", none is "none"; outcomes are
a fixed set (`outcome`).
"""

import logging

from django.conf import settings

from infra import metrics

logger = logging.getLogger(__name__)

ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}
CLIENT_CLOSED = 499
OTHER_MODEL = "other"
NO_MODEL = "none"


def outcome(status: int, limit: str | None, closed: bool) -> str:
    """served, refused_<limit> (ip, rate, quota), client_error, upstream_error, server_error or
    client_closed."""
    if closed or status == CLIENT_CLOSED:
        return "client_closed"
    if status < 400:
        return "served"
    if status == 429:
        return f"refused_{limit or 'rate'}"
    if status in (502, 504):
        return "upstream_error"
    if status >= 500:
        return "server_error"
    return "client_error"


def observe_request(entry, status: int, seconds: float) -> None:
    """One /v1 request ended (its request-log entry, aibaas/gateway/request_log.py)."""
    endpoint = ENDPOINTS.get(entry.path, "models")  # the rest is /v1/models/{model}
    model = entry.model
    model = NO_MODEL if model is None else model if entry.model_known else OTHER_MODEL
    result = outcome(entry.ended or status, entry.limit, entry.closed)
    metrics.child(metrics.V1_REQUESTS, endpoint, model, str(status), result).inc()
    metrics.child(metrics.V1_DURATION, endpoint, model).observe(seconds)
    if entry.first_token is not None:
        metrics.child(metrics.V1_TTFT, model).observe(entry.first_token)


def observe_tokens(model: str, input_tokens: int, output_tokens: int) -> None:
    """Tokens billed for a request of `model` (a registry model: only those produce tokens)."""
    if input_tokens:
        metrics.child(metrics.V1_TOKENS, model, "input").inc(input_tokens)
    if output_tokens:
        metrics.child(metrics.V1_TOKENS, model, "output").inc(output_tokens)


class UsageStreamCollector:
    """aibaas_usage_stream_length: usage events emitted and not yet in PostgreSQL (the Redis
    stream the Celery worker drains). Read at the scrape; absent without a stream or Redis."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from infra.breaker import redis_breaker
        from infra.redis_clients import redis_client
        from metering.usage.events import stream_enabled, stream_key

        if not stream_enabled() or redis_breaker().down:
            return
        try:
            length = redis_client().xlen(stream_key())
        except Exception:
            logger.warning("usage stream length unreadable for the metrics", exc_info=True)
            return
        gauge = GaugeMetricFamily(
            "aibaas_usage_stream_length",
            "Usage events waiting in the Redis stream for the drain.",
        )
        gauge.add_metric([], float(length))
        yield gauge


def scrape_collectors() -> list:
    return [UsageStreamCollector()] if settings.REDIS_URL else []
