from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    """Stripe billing. Its models live in billing/models.py; as an app of its own it gets its
    admin and Celery tasks discovered."""

    name = "billing.subscriptions"
    label = "billing_subscriptions"
    verbose_name = "Stripe billing"
