from celery import shared_task

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
