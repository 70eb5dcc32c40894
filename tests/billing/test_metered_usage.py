"""Metered usage to Stripe through the outbox: one meter event per organization and hour, a
fault in the middle, every window reported exactly once, reconciliation at 0."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.actors import Actor
from billing.models import BillingAccount, MeterReport, Plan
from billing.subscriptions.sync import plans_sync_to_stripe
from billing.subscriptions.tasks import report_usage_to_stripe
from billing.subscriptions.usage import meter_reports_enqueue
from keys.services import api_key_create
from metering.services import usage_record
from tests.billing.conftest import checkout, deliver, pay
from tests.metering.conftest import make_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def metered(stripe_online, owner):
    """The owner's organization subscribed to Pro, which bills $2.50 per million tokens."""
    Plan.objects.filter(slug="pro").update(metered_price_per_million_tokens=Decimal("2.50"))
    plans_sync_to_stripe()
    deliver(Client(), pay(stripe_online, checkout(owner, "pro")))
    return owner


def _hour(moment):
    return moment.replace(minute=0, second=0, microsecond=0)


def _use(owner, at, tokens: int, *, test_mode: bool = False):
    issued = api_key_create(
        organization=owner.organization, name="k", actor=Actor.for_system(), test_mode=test_mode
    )
    usage_record(events=[make_event(issued, input_tokens=tokens, output_tokens=0, created_at=at)])


def _reconcile(command: str = "reconcile_usage", *args: str) -> tuple[int, str]:
    out = StringIO()
    args = ("--stripe", *args) if command == "reconcile_usage" else args
    try:
        call_command(command, *args, stdout=out)
    except SystemExit as exit_:
        return exit_.code, out.getvalue()
    return 0, out.getvalue()


def test_a_fault_in_the_middle_still_reports_every_window_exactly_once(metered, stripe_online):
    start = _hour(timezone.now())
    for hour, tokens in enumerate((1000, 0, 2500)):
        _use(metered, start + timedelta(hours=hour, minutes=5), tokens)
    _use(metered, start + timedelta(minutes=7), 999, test_mode=True)  # never billed

    later = start + timedelta(hours=3, minutes=10)
    with time_machine.travel(later):
        stripe_online.fake.failures_left = 3  # the first send and the library's 2 retries
        assert report_usage_to_stripe.delay().get() == 2

    rows = list(MeterReport.objects.order_by("window_start"))
    assert [(r.tokens, r.status) for r in rows] == [(1000, "failed"), (0, "empty"), (2500, "sent")]
    assert "Injected fault" in rows[0].last_error
    assert _reconcile()[0] == 1  # the failed window is a difference until it is sent

    with time_machine.travel(later + timedelta(minutes=2)):  # past the first backoff (60 s)
        report_usage_to_stripe.delay().get()
        report_usage_to_stripe.delay().get()  # nothing left to send

    events = stripe_online.fake.meter_events
    org = metered.organization.pk
    assert {e["identifier"]: e["payload"]["value"] for e in events.values()} == {
        f"aibaas-{org}-{start:%Y%m%dT%H}": "1000",
        f"aibaas-{org}-{start + timedelta(hours=2):%Y%m%dT%H}": "2500",
    }
    customer = BillingAccount.objects.get(organization=metered.organization).stripe_customer_id
    assert {e["payload"]["stripe_customer_id"] for e in events.values()} == {customer}
    assert MeterReport.objects.filter(status="sent").count() == 2
    code, output = _reconcile()
    assert (code, output.strip().splitlines()[-1]) == (0, "0 difference(s).")
    slug = metered.organization.slug
    assert f"{slug} {start:%Y-%m}: metered 3500 tokens, Stripe received 3500" in output
    assert _reconcile("stripe_reconcile_usage") == (code, output)  # the older name


def test_a_window_stripe_received_differently_is_a_difference(metered, stripe_online):
    start = _hour(timezone.now())
    _use(metered, start + timedelta(minutes=1), 400)
    _use(metered, start + timedelta(hours=1, minutes=1), 600)
    with time_machine.travel(start + timedelta(hours=2, minutes=10)):
        report_usage_to_stripe.delay().get()
    assert _reconcile()[0] == 0
    # Stripe's summary of the first hour says something else than what we sent.
    first = f"aibaas-{metered.organization.pk}-{start:%Y%m%dT%H}"
    stripe_online.fake.meter_events[first]["payload"]["value"] = "399"

    code, output = _reconcile("reconcile_usage", "--org", metered.organization.slug)

    assert code == 1
    assert (
        f"{start:%Y-%m-%d %H}:00 UTC: metered 400 tokens, reported 400 (sent), Stripe received 399"
    ) in output
    assert f"{start + timedelta(hours=1):%Y-%m-%d %H}:00" not in output  # the hour that agrees
    assert output.strip().splitlines()[-1] == "1 difference(s)."


def test_a_retry_of_a_request_stripe_already_took_bills_nothing_twice(metered, stripe_online):
    start = _hour(timezone.now())
    _use(metered, start + timedelta(minutes=1), 500)
    with time_machine.travel(start + timedelta(hours=1, minutes=10)):
        report_usage_to_stripe.delay().get()
        report = MeterReport.objects.get()
        # As if the worker died after Stripe took the event and before the row was marked.
        MeterReport.objects.filter(pk=report.pk).update(status="pending")
        report_usage_to_stripe.delay().get()

    assert len(stripe_online.fake.meter_events) == 1
    assert MeterReport.objects.get().status == "sent"


def test_a_report_retried_after_stripe_forgot_its_idempotency_key_bills_nothing_twice(
    metered, stripe_online
):
    # Stripe took the event, but the answer was lost (a timeout): the row is failed. The retries
    # go on failing for more than a day, past the 24 hours in which Stripe would have answered a
    # resend with its first answer: a plain resend would be a second event, billed twice.
    start = _hour(timezone.now())
    _use(metered, start + timedelta(minutes=1), 700)
    sent_at = start + timedelta(hours=1, minutes=10)
    with time_machine.travel(sent_at):
        report_usage_to_stripe.delay().get()
    MeterReport.objects.update(status="failed", next_attempt_at=sent_at, last_error="timeout")

    with time_machine.travel(sent_at + timedelta(hours=30)):
        report_usage_to_stripe.delay().get()

    assert [e["payload"]["value"] for e in stripe_online.fake.meter_events.values()] == ["700"]
    report = MeterReport.objects.get(tokens=700)  # the later hours are empty
    assert (report.status, report.last_error) == ("sent", "found at Stripe: not sent again")
    assert _reconcile()[0] == 0


def test_a_report_first_failing_for_more_than_a_day_is_sent_once_stripe_is_back(
    metered, stripe_online
):
    start = _hour(timezone.now())
    _use(metered, start + timedelta(minutes=1), 900)
    sent_at = start + timedelta(hours=1, minutes=10)
    with time_machine.travel(sent_at):
        stripe_online.fake.failures_left = 3  # the first send and the library's 2 retries
        report_usage_to_stripe.delay().get()
    assert MeterReport.objects.get().status == "failed"

    with time_machine.travel(sent_at + timedelta(hours=30)):  # Stripe never had it: send it
        report_usage_to_stripe.delay().get()

    assert [e["payload"]["value"] for e in stripe_online.fake.meter_events.values()] == ["900"]
    assert MeterReport.objects.get(tokens=900).status == "sent"
    assert _reconcile()[0] == 0


def test_an_hour_is_reported_only_once_it_has_settled(metered, settings):
    settings.BILLING_METER_SETTLE_SECONDS = 300
    start = _hour(timezone.now())
    _use(metered, start + timedelta(minutes=1), 100)

    assert meter_reports_enqueue(now=start + timedelta(hours=1, minutes=4)) == 0
    assert meter_reports_enqueue(now=start + timedelta(hours=1, minutes=6)) == 1
    assert meter_reports_enqueue(now=start + timedelta(hours=1, minutes=30)) == 0  # idempotent


def test_a_plan_without_a_metered_price_reports_nothing(stripe_online, owner):
    plans_sync_to_stripe()
    deliver(Client(), pay(stripe_online, checkout(owner, "pro")))
    _use(owner, timezone.now(), 100)
    assert meter_reports_enqueue(now=timezone.now() + timedelta(hours=2)) == 0


def test_usage_recorded_after_its_hour_was_reported_shows_as_a_difference(metered):
    start = _hour(timezone.now())
    _use(metered, start + timedelta(minutes=1), 100)
    with time_machine.travel(start + timedelta(hours=1, minutes=10)):
        report_usage_to_stripe.delay().get()
    _use(metered, start + timedelta(minutes=2), 50)  # a late event

    code, output = _reconcile()

    assert code == 1
    assert "metered 150 tokens, reported 100 (sent)" in output
