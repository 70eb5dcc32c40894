from django.urls import path

from metering.rollups import apis

urlpatterns = [
    path("usage", apis.UsageSeriesApi.as_view(), name="api-usage"),
    path("usage/csv", apis.UsageCsvApi.as_view(), name="api-usage-csv"),
]
