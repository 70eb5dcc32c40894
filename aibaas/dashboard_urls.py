"""/dashboard/: the customer's web pages. One namespace; each app owns its views."""

from django.urls import path

from accounts import views
from billing.subscriptions import views as billing_views
from keys import views as key_views
from metering import views as metering_views

app_name = "dashboard"

urlpatterns = [
    path("", metering_views.overview, name="overview"),
    path("team/", views.team, name="team"),
    path("audit/", views.audit, name="audit"),
    path("keys/", key_views.key_list, name="keys"),
    path("keys/new/", key_views.key_create, name="key_create"),
    path("keys/<str:ident>/revoke/", key_views.key_revoke, name="key_revoke"),
    path("keys/<str:ident>/rotate/", key_views.key_rotate, name="key_rotate"),
    path("billing/", billing_views.billing_page, name="billing"),
    path("switch/", views.organization_switch, name="organization_switch"),
    path("organizations/new/", views.organization_new, name="organization_create"),
]
