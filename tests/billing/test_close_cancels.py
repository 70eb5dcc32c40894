"""Closing an organization cancels its Stripe subscription at once, through the real `stripe`
library against the fake Stripe; a failure is recorded, visible and retried, never dropped."""

import logging
from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts.actors import Actor
from accounts.models import AuditEvent, Role
from accounts.services import organization_delete_by_owner
from billing.models import BillingAccount
from billing.subscriptions.closing import CANCELED_ON_CLOSE
from billing.subscriptions.tasks import cancel_owed_subscriptions
from keys.services import api_key_create
from tests.billing.conftest import checkout, deliver, pay

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscribed(synced, owner) -> str:
    """The owner's organization pays for Pro; it has a key, so closing keeps its row."""
    completed = pay(synced, checkout(owner, "pro"))
    deliver(Client(), completed)
    api_key_create(organization=owner.organization, name="k", actor=Actor.for_system("tests"))
    return completed["data"]["object"]["subscription"]


def _close(owner, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        kept = not organization_delete_by_owner(
            organization=owner.organization,
            actor=Actor(user=owner.user, role=Role.OWNER),
            confirmation=owner.organization.name,
        )
    assert kept  # closed (usage and keys are billing records), not deleted


def _cancels(fake, subscription_id: str) -> int:
    return fake.fake.requests.count(("DELETE", f"/v1/subscriptions/{subscription_id}"))


def test_closing_cancels_the_subscription_at_stripe_at_once(
    synced, owner, subscribed, django_capture_on_commit_callbacks
):
    _close(owner, django_capture_on_commit_callbacks)

    assert synced.fake.subscriptions[subscribed]["status"] == "canceled"
    assert _cancels(synced, subscribed) == 1
    account = BillingAccount.objects.get(organization=owner.organization)
    assert (account.subscription_status, account.cancel_owed_since) == ("canceled", None)
    owner.organization.refresh_from_db()
    assert owner.organization.plan.slug == "free"
    recorded = AuditEvent.objects.get(action=CANCELED_ON_CLOSE)
    assert (recorded.target_id, recorded.metadata) == (
        subscribed,
        {"status": "canceled", "attempts": 1},
    )
    assert cancel_owed_subscriptions.delay().get() == 0  # nothing left owed


def test_a_failed_cancellation_is_recorded_and_retried_until_stripe_has_it(
    synced, owner, subscribed, django_capture_on_commit_callbacks, caplog
):
    synced.fake.failures_left = 3  # the call and the library's two retries answer 500
    caplog.set_level(logging.ERROR, logger="billing.subscriptions.closing")

    _close(owner, django_capture_on_commit_callbacks)

    assert synced.fake.subscriptions[subscribed]["status"] == "active"
    account = BillingAccount.objects.get(organization=owner.organization)
    assert account.cancel_owed_since is not None and account.cancel_attempts == 1
    assert "Injected fault" in account.cancel_last_error
    assert subscribed in caplog.text and "failed" in caplog.text
    assert cancel_owed_subscriptions.delay().get() == 0  # not due before its backoff

    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        assert cancel_owed_subscriptions.delay().get() == 1

    assert synced.fake.subscriptions[subscribed]["status"] == "canceled"
    account.refresh_from_db()
    assert (account.subscription_status, account.cancel_owed_since) == ("canceled", None)
    assert (account.cancel_attempts, account.cancel_last_error) == (0, "")
    assert AuditEvent.objects.get(action=CANCELED_ON_CLOSE).metadata["attempts"] == 2


def test_a_subscription_stripe_already_ended_counts_as_canceled(
    synced, owner, subscribed, django_capture_on_commit_callbacks
):
    synced.test_call(f"/_test/subscriptions/{subscribed}", status="canceled")

    _close(owner, django_capture_on_commit_callbacks)

    assert _cancels(synced, subscribed) == 1  # refused by Stripe, then read: already ended
    account = BillingAccount.objects.get(organization=owner.organization)
    assert (account.subscription_status, account.cancel_owed_since) == ("canceled", None)


def test_closing_an_organization_without_a_subscription_calls_no_stripe(
    synced, owner, django_capture_on_commit_callbacks
):
    api_key_create(organization=owner.organization, name="k", actor=Actor.for_system("tests"))
    before = len(synced.fake.requests)

    _close(owner, django_capture_on_commit_callbacks)

    assert len(synced.fake.requests) == before
    assert not AuditEvent.objects.filter(action=CANCELED_ON_CLOSE).exists()


def test_an_organization_with_a_subscription_and_nothing_else_is_closed_not_deleted(
    synced, owner, django_capture_on_commit_callbacks
):
    completed = pay(synced, checkout(owner, "pro"))
    deliver(Client(), completed)
    subscription_id = completed["data"]["object"]["subscription"]

    _close(owner, django_capture_on_commit_callbacks)  # no key, no usage: kept all the same

    assert synced.fake.subscriptions[subscription_id]["status"] == "canceled"
