from django.urls import path

from aibaas.operators import apis

urlpatterns = [
    path("admin/orgs", apis.OrgListCreateApi.as_view(), name="api-admin-orgs"),
    path("admin/orgs/<str:slug>", apis.OrgDetailApi.as_view(), name="api-admin-org"),
    path(
        "admin/orgs/<str:slug>/reset-usage",
        apis.OrgResetUsageApi.as_view(),
        name="api-admin-org-reset-usage",
    ),
]
