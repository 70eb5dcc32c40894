from celery import shared_task

from billing.subscriptions.state import grace_periods_expire


@shared_task
def expire_grace_periods() -> int:
    """Hourly (Celery beat): organizations past their payment grace period go to free."""
    return grace_periods_expire()
