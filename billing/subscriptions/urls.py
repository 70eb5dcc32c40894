"""/billing/...: Stripe's webhook and the billing page's actions (checkout, portal, cancel)."""

from django.urls import path

from billing.subscriptions import views

app_name = "billing"

urlpatterns = [
    path("webhook/", views.webhook, name="webhook"),
    path("checkout/<slug:plan>/", views.checkout, name="checkout"),
    path("portal/", views.portal, name="portal"),
    path("cancel/", views.cancel, name="cancel"),
]
