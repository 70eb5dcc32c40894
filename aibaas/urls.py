from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from aibaas import health

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:overview", permanent=False)),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("accounts/", include("accounts.urls")),
    path("dashboard/", include("aibaas.dashboard_urls")),
    path("admin/", admin.site.urls),
]
