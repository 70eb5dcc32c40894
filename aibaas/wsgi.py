"""WSGI entry point: Django alone, without the /v1 inference routes (their one entry path is the
ASGI handler of aibaas/asgi.py, which production and `make run` serve)."""

import os

from django.core.wsgi import get_wsgi_application

from infra import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aibaas.settings")

tracing.setup()  # before Django builds its middleware; off unless configured (infra/tracing.py)
application = get_wsgi_application()
