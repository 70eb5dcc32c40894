"""/billing/...: Stripe's webhook and the dashboard's checkout and portal redirects."""

from django.urls import path

from billing.subscriptions import views

app_name = "billing"

urlpatterns = [
    path("webhook/", views.webhook, name="webhook"),
]
