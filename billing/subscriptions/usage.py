"""Metered usage to Stripe through an outbox (billing.models.MeterReport).

Every closed hour (ended BILLING_METER_SETTLE_SECONDS ago, so late usage events are in) of an
organization whose subscribed plan has a metered price becomes one row with its billable tokens
(test-mode keys never count); rows are sent as Billing Meter events with a deterministic
identifier and retried with exponential backoff until Stripe has them, never dropped.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from billing.models import BillingAccount, MeterReport
from billing.subscriptions import stripe_client
from billing.subscriptions.state import LIVE
from billing.subscriptions.sync import METER_EVENT_NAME
from metering.models import UsageEvent

logger = logging.getLogger(__name__)

WINDOW = timedelta(hours=1)
MAX_WINDOWS_PER_RUN = 24 * 31
MAX_BACKOFF_SECONDS = 3600
# Stripe keeps an Idempotency-Key, and a meter event's identifier unique, for 24 hours: a row
# first tried longer ago than this is checked against the meter before it is sent again.
IDEMPOTENCY_HORIZON = timedelta(hours=23)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def identifier(organization_id: int, window_start: datetime) -> str:
    return f"aibaas-{organization_id}-{window_start:%Y%m%dT%H}"


def billable_tokens_by_hour(*, organization_id: int, start: datetime, end: datetime) -> dict:
    """{window start: billable tokens} in [start, end): what the meter must say. One query."""
    rows = (
        UsageEvent.objects.filter(
            organization_id=organization_id,
            billable=True,
            created_at__gte=start,
            created_at__lt=end,
        )
        .exclude(api_key__test_mode=True)
        .annotate(window=TruncHour("created_at"))
        .values("window")
        .annotate(tokens=Sum(F("input_tokens") + F("output_tokens")))
        .order_by()
    )
    return {row["window"]: row["tokens"] or 0 for row in rows}


def _metered_accounts():
    return BillingAccount.objects.filter(
        subscription_status__in=LIVE, stripe_customer_id__isnull=False
    ).exclude(Q(subscribed_plan__isnull=True) | Q(subscribed_plan__stripe_metered_price_id=""))


def meter_reports_enqueue(*, now: datetime | None = None) -> int:
    """Write the outbox rows of every closed hour not yet written. Idempotent. Returns how many
    rows were written."""
    now = now or timezone.now()
    last_end = _hour(now - timedelta(seconds=settings.BILLING_METER_SETTLE_SECONDS))
    written = 0
    for account in _metered_accounts():
        latest = MeterReport.objects.filter(organization_id=account.organization_id).aggregate(
            end=Max("window_end")
        )["end"]
        start = latest or _hour(account.current_period_start or now)
        end = min(last_end, start + MAX_WINDOWS_PER_RUN * WINDOW)
        if start >= end:
            continue
        tokens = billable_tokens_by_hour(
            organization_id=account.organization_id, start=start, end=end
        )
        window = start
        while window < end:
            used = tokens.get(window, 0)
            try:
                with transaction.atomic():
                    MeterReport.objects.create(
                        organization_id=account.organization_id,
                        window_start=window,
                        window_end=window + WINDOW,
                        tokens=used,
                        identifier=identifier(account.organization_id, window),
                        event_name=METER_EVENT_NAME,
                        stripe_customer_id=account.stripe_customer_id,
                        status=MeterReport.Status.PENDING if used else MeterReport.Status.EMPTY,
                    )
                written += 1
            except IntegrityError:  # another run wrote it
                pass
            window += WINDOW
    return written


def meter_reports_due(*, now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    due = MeterReport.objects.filter(
        Q(status=MeterReport.Status.PENDING)
        | Q(status=MeterReport.Status.FAILED, next_attempt_at__lte=now)
    )
    return list(due.order_by("window_start").values_list("id", flat=True))


def meter_report_send(*, report_id: int) -> str:
    """Send one outbox row to Stripe. Idempotent: a sent row is not sent again, a row another
    worker holds is left to it; a failure is recorded and retried later with backoff."""
    with transaction.atomic():
        report = (
            MeterReport.objects.select_for_update(skip_locked=True).filter(pk=report_id).first()
        )
        if report is None or report.status in (MeterReport.Status.SENT, MeterReport.Status.EMPTY):
            return "nothing to send"
        try:
            if _may_be_at_stripe_already(report):
                _mark_sent(report, note="found at Stripe: not sent again")
                return "already at Stripe"
            stripe_client.meter_event_create(
                event_name=report.event_name,
                identifier=report.identifier,
                customer=report.stripe_customer_id,
                value=report.tokens,
                timestamp=int(report.window_end.timestamp()) - 1,
            )
        except stripe_client.StripeError as error:
            report.attempts += 1
            report.status = MeterReport.Status.FAILED
            report.last_error = str(error)[:2000]
            backoff = min(60 * 2 ** (report.attempts - 1), MAX_BACKOFF_SECONDS)
            report.next_attempt_at = timezone.now() + timedelta(seconds=backoff)
            report.save()
            logger.warning(
                "Meter report %s failed (%s): %s", report.identifier, report.attempts, error
            )
            return "failed"
        report.attempts += 1
        _mark_sent(report)
        return "sent"


def _may_be_at_stripe_already(report: MeterReport) -> bool:
    """Stripe takes a retry as the same event (Idempotency-Key, identifier) for 24 hours only. A
    row first tried longer ago than IDEMPOTENCY_HORIZON may have reached Stripe with its answer
    lost: ask Stripe's meter what it received in the window before sending it again."""
    if report.attempts == 0 or timezone.now() - report.created_at < IDEMPOTENCY_HORIZON:
        return False
    meter_id = stripe_client.meter_id_for(report.event_name)
    if meter_id is None:
        return False
    start = int(report.window_start.timestamp())
    received = stripe_client.meter_received_by_hour(
        meter_id=meter_id,
        customer=report.stripe_customer_id,
        start=start,
        end=int(report.window_end.timestamp()),
    )
    return received.get(start, 0) > 0


def _mark_sent(report: MeterReport, *, note: str = "") -> None:
    report.status = MeterReport.Status.SENT
    report.sent_at = timezone.now()
    report.last_error = note
    report.save()


def meter_reports_retry(*, report_ids: list[int]) -> int:
    """Make failed rows due now (admin action). Returns how many."""
    return MeterReport.objects.filter(pk__in=report_ids, status=MeterReport.Status.FAILED).update(
        next_attempt_at=timezone.now()
    )
