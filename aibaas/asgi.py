"""ASGI entry point: the /v1 inference routes on the lean gateway handler, the rest on Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aibaas.settings")

django_application = get_asgi_application()

from aibaas.gateway.asgi import GatewayApplication  # noqa: E402  (needs the apps loaded)

application = GatewayApplication(django_application)
