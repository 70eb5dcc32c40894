"""/dashboard/: the customer's web pages. One namespace; each app owns its views."""

from django.urls import path

from accounts import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("team/", views.team, name="team"),
    path("switch/", views.organization_switch, name="organization_switch"),
    path("organizations/new/", views.organization_new, name="organization_create"),
]
