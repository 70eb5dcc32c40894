"""A failed payment: past_due with a grace period (the page and /v1/key say so), then Free; a
recovered payment restores the plan."""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts.actors import Actor
from accounts.models import AuditEvent
from billing.subscriptions.state import PLAN_CHANGED, grace_periods_expire
from billing.subscriptions.tasks import expire_grace_periods
from keys.services import api_key_create
from tests.billing.conftest import checkout, deliver, pay
from tests.stripe_fake import event

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscribed(synced, owner, settings):
    settings.BILLING_GRACE_DAYS = 3
    completed = pay(synced, checkout(owner, "pro"))
    deliver(Client(), completed)
    return completed["data"]["object"]["subscription"]


def _invoice(fake, type_: str, owner, subscription_id: str) -> dict:
    customer = fake.fake.subscriptions[subscription_id]["customer"]
    invoice = {
        "id": f"in_{type_[-4:]}",
        "object": "invoice",
        "customer": customer,
        "parent": {"subscription_details": {"subscription": subscription_id}},
    }
    return event(type_, invoice)


def _fail_payment(fake, owner, subscription_id):
    fake.test_call(f"/_test/subscriptions/{subscription_id}", status="past_due")
    deliver(Client(), _invoice(fake, "invoice.payment_failed", owner, subscription_id))


def _plan(owner) -> str:
    owner.organization.refresh_from_db()
    return owner.organization.plan.slug


def test_a_failed_payment_keeps_the_plan_during_the_grace_period_and_says_so(
    synced, owner, subscribed, owner_client
):
    issued = api_key_create(organization=owner.organization, name="k", actor=Actor.for_system())

    _fail_payment(synced, owner, subscribed)

    assert _plan(owner) == "pro"
    html = owner_client.get("/dashboard/billing/").content.decode()
    assert 'data-testid="past-due"' in html
    key = Client().get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}").json()
    assert key["plan"] == "pro"
    assert key["billing"]["status"] == "past_due"
    assert key["billing"]["plan"] == "pro"
    grace_until = timezone.datetime.fromisoformat(key["billing"]["grace_until"])
    assert timedelta(days=2.9) < grace_until - timezone.now() <= timedelta(days=3)


def test_a_key_of_an_organization_paying_on_time_has_no_billing_notice(synced, owner, subscribed):
    issued = api_key_create(organization=owner.organization, name="k", actor=Actor.for_system())
    key = Client().get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}").json()
    assert key["billing"] is None


def test_after_the_grace_period_the_organization_is_on_free(synced, owner, subscribed):
    _fail_payment(synced, owner, subscribed)
    assert grace_periods_expire() == 0  # still within the grace period

    with time_machine.travel(timezone.now() + timedelta(days=3, minutes=1)):
        assert expire_grace_periods.delay().get() == 1

    assert _plan(owner) == "free"
    last = AuditEvent.objects.filter(action=PLAN_CHANGED).order_by("-id").first()
    assert (last.metadata["from"], last.metadata["to"]) == ("pro", "free")
    assert last.metadata["reason"] == "grace period over"
    assert last.actor_label == "stripe"
    assert grace_periods_expire() == 0  # once


def test_a_recovered_payment_restores_the_plan(synced, owner, subscribed):
    _fail_payment(synced, owner, subscribed)
    with time_machine.travel(timezone.now() + timedelta(days=4)):
        grace_periods_expire()
        assert _plan(owner) == "free"

        synced.test_call(f"/_test/subscriptions/{subscribed}", status="active")
        paid = _invoice(synced, "invoice.paid", owner, subscribed)
        deliver(Client(), paid)

    assert _plan(owner) == "pro"
    restored = AuditEvent.objects.filter(action=PLAN_CHANGED).order_by("-id").first()
    assert (restored.metadata["to"], restored.metadata["event_id"]) == ("pro", paid["id"])
    account = owner.organization.billing_account
    account.refresh_from_db()
    assert account.past_due_since is None


def test_a_payment_recovered_within_the_grace_period_changes_no_plan(synced, owner, subscribed):
    _fail_payment(synced, owner, subscribed)
    synced.test_call(f"/_test/subscriptions/{subscribed}", status="active")
    deliver(Client(), _invoice(synced, "invoice.paid", owner, subscribed))

    with time_machine.travel(timezone.now() + timedelta(days=10)):
        assert grace_periods_expire() == 0
    assert _plan(owner) == "pro"
    assert AuditEvent.objects.filter(action=PLAN_CHANGED).count() == 1  # the upgrade only
