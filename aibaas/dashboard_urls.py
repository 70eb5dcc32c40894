"""/dashboard/: the customer's web pages. One namespace; each app owns its views."""

from django.urls import path

from accounts import organization_views, team_views, views
from billing.subscriptions import views as billing_views
from keys import views as key_views
from metering import overview_views
from metering import views as metering_views

app_name = "dashboard"

urlpatterns = [
    path("", overview_views.overview, name="overview"),
    path("overview.json", overview_views.overview_counters, name="overview_counters"),
    path("team/", team_views.team, name="team"),
    path("team/invite/", team_views.team_invite, name="team_invite"),
    path("team/invitations/resend/", team_views.invitation_resend_view, name="invitation_resend"),
    path("team/invitations/revoke/", team_views.invitation_revoke_view, name="invitation_revoke"),
    path("team/role/", team_views.member_role, name="member_role"),
    path("team/remove/", team_views.member_remove, name="member_remove"),
    path("team/transfer/", team_views.owner_transfer, name="owner_transfer"),
    path("settings/", organization_views.organization_settings, name="settings"),
    path("settings/leave/", organization_views.organization_leave, name="organization_leave"),
    path("settings/delete/", organization_views.organization_delete, name="organization_delete"),
    path("audit/", views.audit, name="audit"),
    path("audit/export.csv", views.audit_csv, name="audit_csv"),
    path("keys/", key_views.key_list, name="keys"),
    path("keys/new/", key_views.key_create, name="key_create"),
    path("keys/<str:ident>/", metering_views.key_detail, name="key_detail"),
    path("keys/<str:ident>/edit/", key_views.key_edit, name="key_edit"),
    path("keys/<str:ident>/revoke/", key_views.key_revoke, name="key_revoke"),
    path("keys/<str:ident>/rotate/", key_views.key_rotate, name="key_rotate"),
    path("usage/", metering_views.usage_page, name="usage"),
    path("billing/", billing_views.billing_page, name="billing"),
    path("switch/", views.organization_switch, name="organization_switch"),
    path("organizations/new/", views.organization_new, name="organization_create"),
]
