from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from aibaas import error_views, health
from aibaas.gateway.apis import KeyInfoApi, UsageApi

api_patterns = [
    path("", include("accounts.api_urls")),
    path("", include("keys.urls")),
    path("", include("metering.rollups.urls")),
    path("", include("aibaas.operators.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

v1_patterns = [
    path("key", KeyInfoApi.as_view(), name="v1-key"),
    path("usage", UsageApi.as_view(), name="v1-usage"),
    # The inference routes (/v1/models, /v1/chat/completions, /v1/embeddings) are not here:
    # the ASGI handler in front of Django serves them (aibaas/gateway/asgi.py). Anything else
    # under /v1 is OpenAI-shaped JSON too, DEBUG or not (an SDK on `make run`
    # would otherwise get Django's HTML debug page).
    re_path(r"^.*$", csrf_exempt(error_views.not_found)),
]

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:overview", permanent=False)),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("accounts/", include("accounts.urls")),
    path("dashboard/", include("aibaas.dashboard_urls")),
    path("billing/", include("billing.subscriptions.urls")),
    path("api/", include(api_patterns)),
    path("v1/", include(v1_patterns)),
    path("admin/", admin.site.urls),
]

handler404 = "aibaas.error_views.not_found"
handler500 = "aibaas.error_views.server_error"
