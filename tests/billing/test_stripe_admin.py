"""Operators: each organization's Stripe state in the admin, the webhook events, a resync."""

import pytest
from django.test import Client

from accounts.models import AuditEvent
from billing.models import BillingAccount
from billing.subscriptions.state import PLAN_CHANGED
from tests.billing.conftest import checkout, deliver, pay
from tests.factories import UserFactory
from tests.stripe_fake import event

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True, password=None))
    return client


def test_the_admin_lists_billing_accounts_and_stripe_events(synced, owner, operator):
    completed = pay(synced, checkout(owner, "pro"))
    deliver(Client(), completed)

    accounts = operator.get("/admin/billing/billingaccount/").content.decode()
    events = operator.get("/admin/billing/stripeevent/").content.decode()

    account = BillingAccount.objects.get(organization=owner.organization)
    assert account.stripe_customer_id in accounts and "active" in accounts
    assert completed["id"] in events and "checkout.session.completed" in events


def test_resync_applies_what_stripe_holds_when_a_webhook_was_missed(synced, owner, operator):
    completed = pay(synced, checkout(owner, "pro"))
    deliver(Client(), completed)
    subscription = completed["data"]["object"]["subscription"]
    synced.test_call(f"/_test/subscriptions/{subscription}", status="canceled")  # never told
    account = BillingAccount.objects.get(organization=owner.organization)

    response = operator.post(
        "/admin/billing/billingaccount/",
        {"action": "resync", "_selected_action": [account.pk]},
        follow=True,
    )

    assert f"subscription {subscription} canceled" in response.content.decode()
    owner.organization.refresh_from_db()
    assert owner.organization.plan.slug == "free"
    last = AuditEvent.objects.filter(action=PLAN_CHANGED).order_by("-id").first()
    assert (last.metadata["to"], last.actor_label) == ("free", "stripe")


def test_operators_cannot_edit_stripes_state_in_the_admin(synced, owner, operator):
    deliver(Client(), pay(synced, checkout(owner, "pro")))
    account = BillingAccount.objects.get(organization=owner.organization)

    operator.post(
        f"/admin/billing/billingaccount/{account.pk}/change/", {"subscription_status": "active"}
    )
    page = operator.get(f"/admin/billing/billingaccount/{account.pk}/change/").content.decode()

    assert 'name="subscription_status"' not in page


def test_an_operator_can_cancel_a_subscription_now_instead_of_at_period_end(
    synced, owner, operator
):
    completed = pay(synced, checkout(owner, "pro"))
    deliver(Client(), completed)
    account = BillingAccount.objects.get(organization=owner.organization)

    response = operator.post(
        "/admin/billing/billingaccount/",
        {"action": "cancel_now", "_selected_action": [account.pk]},
        follow=True,
    )

    assert "canceled" in response.content.decode()
    subscription = synced.fake.subscriptions[completed["data"]["object"]["subscription"]]
    assert subscription["status"] == "canceled"
    owner.organization.refresh_from_db()
    assert owner.organization.plan.slug == "free"
    assert AuditEvent.objects.filter(action="billing.canceled_now").exists()
    # Stripe's customer.subscription.deleted that follows changes nothing more.
    deleted = deliver(Client(), event("customer.subscription.deleted", dict(subscription)))
    assert deleted.status_code == 200
    assert AuditEvent.objects.filter(action=PLAN_CHANGED).count() == 2  # up, then down once
