from celery import shared_task

from billing.subscriptions.closing import cancellation_send, cancellations_due
from billing.subscriptions.state import grace_periods_expire
from billing.subscriptions.usage import meter_report_send, meter_reports_due, meter_reports_enqueue


@shared_task
def expire_grace_periods() -> int:
    """Hourly (Celery beat): organizations past their payment grace period go to free."""
    return grace_periods_expire()


@shared_task
def report_usage_to_stripe() -> int:
    """Every few minutes (Celery beat): write the outbox rows of closed hours, then send each
    due row in a task of its own. Returns how many were sent off."""
    meter_reports_enqueue()
    due = meter_reports_due()
    for report_id in due:
        send_meter_report.delay(report_id)
    return len(due)


@shared_task
def send_meter_report(report_id: int) -> str:
    return meter_report_send(report_id=report_id)


@shared_task
def cancel_subscription(account_id: int) -> str:
    """Cancel, at Stripe, the subscription of a closed organization (a failure is recorded on
    the account and retried by `cancel_owed_subscriptions`)."""
    return cancellation_send(account_id=account_id)


@shared_task
def cancel_owed_subscriptions() -> int:
    """Every few minutes (Celery beat): retry each owed cancellation that is due. Returns how
    many were sent off."""
    due = cancellations_due()
    for account_id in due:
        cancel_subscription.delay(account_id)
    return len(due)
