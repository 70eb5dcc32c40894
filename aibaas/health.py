"""Liveness and readiness probes for load balancers and orchestrators."""

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

PROBE_TIMEOUT_SECONDS = 1.0


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
    """Ready when the database and, if configured, Redis answer. 503 names what is down."""
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
    if down:
        return JsonResponse({"status": "unavailable", "checks": checks, "down": down}, status=503)
    return JsonResponse({"status": "ok", "checks": checks})
