"""Liveness and readiness probes for load balancers and orchestrators, and Prometheus metrics.

/healthz is public. /metrics and the detail of /readyz (what is down, the limiter's state) are
for operators only: a request carrying `Authorization: Bearer <METRICS_TOKEN>`, or coming from
METRICS_ALLOWED_NETWORKS (the client address as everywhere: infra.http.client_ip). Anyone else
gets /readyz's status alone, and 401/403 from /metrics.
"""

import hmac
import ipaddress
import os

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from infra.errors import ApplicationError
from infra.http import client_ip

PROBE_TIMEOUT_SECONDS = 1.0
METRICS_UNAUTHORIZED = "metrics_unauthorized"
METRICS_UNAUTHORIZED_MESSAGE = (
    "Metrics are for operators: send Authorization: Bearer <METRICS_TOKEN>, or call from "
    "METRICS_ALLOWED_NETWORKS."
)


def operator_authorized(request: HttpRequest) -> bool:
    """The caller may see metrics and readiness detail: the METRICS_TOKEN bearer, or an address
    in METRICS_ALLOWED_NETWORKS. Neither configured: nobody."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            return True
    networks = settings.METRICS_ALLOWED_NETWORKS
    if networks:
        address = client_ip(request)
        if address is not None:
            ip = ipaddress.ip_address(address)
            return any(ip in ipaddress.ip_network(network) for network in networks)
    return False


def _unauthorized() -> JsonResponse:
    error = ApplicationError(
        METRICS_UNAUTHORIZED,
        METRICS_UNAUTHORIZED_MESSAGE,
        status=401 if settings.METRICS_TOKEN else 403,
        error_type="authentication_error",
    )
    response = JsonResponse(error.as_dict(), status=error.status)
    if settings.METRICS_TOKEN:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving requests. Touches nothing else."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "not ready"
        return f"{type(exc).__name__}: {exc}".strip()[:300]
    return None


def _redis_urls() -> list[str]:
    urls = [settings.REDIS_URL, settings.CACHE_URL]
    return list(dict.fromkeys(url for url in urls if url))


def _check_redis(url: str) -> str | None:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=PROBE_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()[:300]
    finally:
        client.close()
    return None


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and, if configured, Redis answer: 200, else 503. Operators
    (operator_authorized) also get what is down and `limiter`: where this process counts rate
    limits ("redis", or "local" while Redis is unreachable: still limiting, per process)."""
    from metering.limiter import backend_status

    checks: dict[str, str] = {}
    down: dict[str, str] = {}
    if error := _check_database():
        down["database"] = error
    else:
        checks["database"] = "ok"
    for url in _redis_urls():
        name = "redis" if url == settings.REDIS_URL else "cache"
        if error := _check_redis(url):
            down[name] = error
        else:
            checks[name] = "ok"
    if not operator_authorized(request):
        if down:
            return JsonResponse({"status": "unavailable"}, status=503)
        return JsonResponse({"status": "ok"})
    limiter = backend_status()
    if down:
        return JsonResponse(
            {"status": "unavailable", "checks": checks, "down": down, "limiter": limiter},
            status=503,
        )
    return JsonResponse({"status": "ok", "checks": checks, "limiter": limiter})


class _LimiterCollector:
    """The rate limiter's state in this process, read at each scrape (metering/limiter/)."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from metering.limiter import backend_status

        status = backend_status()
        pid = str(os.getpid())
        backend = GaugeMetricFamily(
            "aibaas_rate_limiter_backend",
            "Where this process counts rate limits: 1 for the backend in use.",
            labels=["pid", "backend"],
        )
        for name in ("redis", "local"):
            backend.add_metric([pid, name], 1.0 if status["backend"] == name else 0.0)
        yield backend
        down = GaugeMetricFamily(
            "aibaas_rate_limiter_redis_down",
            "1 while Redis is configured but unreachable: limits are then counted per process.",
            labels=["pid"],
        )
        down.add_metric([pid], 1.0 if status["redis_down_since"] else 0.0)
        yield down
        fallbacks = CounterMetricFamily(
            "aibaas_rate_limiter_fallbacks",
            "Limiter calls answered in this process because Redis was unreachable.",
            labels=["pid"],
        )
        fallbacks.add_metric([pid], float(status["fallbacks"]))
        yield fallbacks


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (infra/metrics.py): with PROMETHEUS_MULTIPROC_DIR, those of every
    process of this instance merged, whichever worker answers; then, read now, the usage
    stream's length and where this process's limiter counts (its `pid` label).
    Operators only (operator_authorized)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from aibaas.gateway.metrics import scrape_collectors
    from infra.metrics import exposition

    if not operator_authorized(request):
        return _unauthorized()
    text = exposition([*scrape_collectors(), _LimiterCollector()])
    return HttpResponse(text, content_type=CONTENT_TYPE_LATEST)
