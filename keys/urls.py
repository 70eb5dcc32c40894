from django.urls import path

from keys import apis, audit_apis

urlpatterns = [
    path("keys", apis.KeyListCreateApi.as_view(), name="api-keys"),
    path("keys/<str:ident>", apis.KeyDetailApi.as_view(), name="api-key"),
    path("keys/<str:ident>/revoke", apis.KeyRevokeApi.as_view(), name="api-key-revoke"),
    path("keys/<str:ident>/rotate", apis.KeyRotateApi.as_view(), name="api-key-rotate"),
    path("audit", audit_apis.AuditListApi.as_view(), name="api-audit"),
]
