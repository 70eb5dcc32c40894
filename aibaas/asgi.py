"""ASGI entry point: the /v1 inference routes on the lean gateway handler, the rest on Django.

Garbage collection is tuned for a server process once the application is loaded: what exists
then (most of the process's objects) is frozen out of the collector's way, and a collection
starts after GC_THRESHOLDS allocations instead of Python's 700, 10, 10. Only cyclic garbage
waits longer; memory grows by a few MB. The measurements: docs/gateway-performance.md.
OpenTelemetry tracing starts here when configured (infra/tracing.py).
"""

import gc
import os

from django.core.asgi import get_asgi_application

from infra import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aibaas.settings")

# In each serving process, before Django builds its middleware (the instrumentation adds its
# own): the app is loaded per worker, after gunicorn's fork. Off unless configured.
tracing.setup()

django_application = get_asgi_application()

from aibaas.gateway.asgi import GatewayApplication  # noqa: E402  (needs the apps loaded)

application = GatewayApplication(django_application)


def _tune_garbage_collection() -> None:
    from django.conf import settings

    thresholds = settings.GC_THRESHOLDS
    if thresholds:
        gc.freeze()
        gc.set_threshold(*thresholds[:3])


_tune_garbage_collection()
