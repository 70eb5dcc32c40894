"""Prometheus metrics: every series aibaas exports, the Django middleware of the HTTP series, and
the exposition /metrics serves (aibaas/health.py).

Official prometheus_client. With PROMETHEUS_MULTIPROC_DIR set (gunicorn's workers, the Celery
worker of the same host), each process writes its values to files there and an exposition
merges them all: the instance's totals whichever worker answers the scrape. Without it (make
run, tests), the in-process registry. Labels are bounded: routes by URL pattern, /v1 models
from the registry (else "other"), upstreams by host; never a key, a user, an organization or a
raw path. Hot path: one labelled child per series and request, looked up in a dict.
"""

import contextlib
import glob
import logging
import os
import time
from collections.abc import Iterable


def _multiproc_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR, made if missing; unset (in-process metrics, with a warning)
    when it cannot be written, e.g. a one-off `manage.py` run as another user. Runs before
    prometheus_client is imported: its import reads the variable."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not path:
        # Set but empty would put prometheus_client in multiprocess mode, writing to the cwd.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        try:
            os.makedirs(path, exist_ok=True)
            usable = os.access(path, os.W_OK | os.X_OK)
        except OSError:
            usable = False
        if not usable:
            logging.getLogger(__name__).warning(
                "PROMETHEUS_MULTIPROC_DIR %s is not writable: this process keeps its metrics "
                "to itself",
                path,
            )
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            return ""
    return path


MULTIPROC_DIR = _multiproc_dir()


from asgiref.sync import iscoroutinefunction, markcoroutinefunction  # noqa: E402
from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

from infra import metric_batch  # noqa: E402

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds. Inference takes from milliseconds (refusals, the demo model) to minutes (streams).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 900, 3600)

HTTP_REQUESTS = Counter(
    "aibaas_http_requests",
    "HTTP requests served by Django (dashboard, /api, admin, probes), by URL pattern.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "aibaas_http_request_duration_seconds",
    "Time Django took to answer, by URL pattern.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
V1_REQUESTS = Counter(
    "aibaas_v1_requests",
    "/v1 requests by endpoint, model, status and outcome (served, refused_<limit>, "
    "client_error, upstream_error, server_error, client_closed).",
    ["endpoint", "model", "status", "outcome"],
    registry=REGISTRY,
)
V1_DURATION = Histogram(
    "aibaas_v1_request_duration_seconds",
    "/v1 request latency, to the last byte sent (streams included).",
    ["endpoint", "model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
V1_TTFT = Histogram(
    "aibaas_v1_time_to_first_token_seconds",
    "Streamed chat completions: time until the first chunk is sent.",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
V1_TOKENS = Counter(
    "aibaas_v1_tokens",
    "Tokens of /v1 requests as billed (direction: input or output).",
    ["model", "direction"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "aibaas_upstream_response_seconds",
    "Time until a model server's response headers, by upstream (host:port).",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "aibaas_upstream_errors",
    "Model server failures by upstream (host:port) and kind (unreachable, timeout, http_<status>,"
    " not_event_stream, broken).",
    ["upstream", "kind"],
    registry=REGISTRY,
)
LIMITER_DECISIONS = Counter(
    "aibaas_limiter_decisions",
    "Admissions of /v1 requests: admitted, or refused and by which limit.",
    ["decision", "limit"],
    registry=REGISTRY,
)
REDIS_FALLBACKS = Counter(
    "aibaas_redis_fallbacks",
    "Rate limiter calls counted in the process because Redis was unreachable.",
    registry=REGISTRY,
)
REDIS_BREAKER_OPENS = Counter(
    "aibaas_redis_breaker_opens",
    "Times a process found Redis unreachable and started falling back (infra/breaker.py).",
    registry=REGISTRY,
)
USAGE_LAG = Histogram(
    "aibaas_usage_event_lag_seconds",
    "Usage events: from their emission to their commit in PostgreSQL by the drain.",
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)
CELERY_TASK_FAILURES = Counter(
    "aibaas_celery_task_failures",
    "Celery tasks that raised, by task name.",
    ["task"],
    registry=REGISTRY,
)

_children: dict[tuple, object] = {}


def child(metric, *values: str):
    """`metric.labels(*values)`, cached: a dict lookup instead of the client's validation and
    lock on every request (the labels are bounded, and so is this cache). Counters and
    histograms are deferred: counted in memory, applied within a second and before every
    exposition (infra/metric_batch.py)."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric_batch.deferred(metric.labels(*values))
    return found


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


# --- the HTTP series (Django) -------------------------------------------------------------------


def _route(request) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else UNMATCHED


def _observe(request, status: int, started: float) -> None:
    route, method = _route(request), method_label(request.method)
    child(HTTP_REQUESTS, route, method, str(status)).inc()
    child(HTTP_DURATION, route, method).observe(time.perf_counter() - started)


class MetricsMiddleware:
    """The HTTP series of every request Django answers. Sync and async capable (no thread hop
    under ASGI). The route is Django's URL pattern (`api/keys/<str:key_id>`), never the path."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _observe(request, response.status_code, started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        _observe(request, response.status_code, started)
        return response


# --- exposition ---------------------------------------------------------------------------------


class _InProcess:
    def collect(self):
        return REGISTRY.collect()


def exposition(collectors: Iterable = ()) -> bytes:
    """The text of a scrape: every process's series (merged from PROMETHEUS_MULTIPROC_DIR when
    set, else this process's), then `collectors` (read at the scrape, e.g. a stream's length)."""
    metric_batch.flush()  # this process's own counts, up to now
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROC_DIR:
        MultiProcessCollector(registry, path=MULTIPROC_DIR)
    else:
        registry.register(_InProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_dead_files(path: str = MULTIPROC_DIR) -> None:
    """At a server's start: drop the value files of processes no longer running (a previous run),
    keep those of live ones (the Celery worker sharing the host's directory). Files are named
    `<kind>_<pid>.db` by prometheus_client."""
    if not path:
        return
    for name in glob.glob(os.path.join(path, "*.db")):
        pid = os.path.basename(name)[: -len(".db")].rpartition("_")[2]
        if not pid.isdigit() or not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def process_exited(pid: int) -> None:
    """A worker process ended (gunicorn's child_exit): its live gauges go; counters stay."""
    if MULTIPROC_DIR:
        mark_process_dead(pid, MULTIPROC_DIR)
