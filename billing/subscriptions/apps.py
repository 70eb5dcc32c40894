from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    """Stripe billing. Its models live in billing/models.py; as an app of its own it gets its
    admin, Celery tasks and signal receivers discovered."""

    name = "billing.subscriptions"
    label = "billing_subscriptions"
    verbose_name = "Stripe billing"

    def ready(self) -> None:
        from billing.subscriptions import signals  # noqa: F401  (organization_closing)
