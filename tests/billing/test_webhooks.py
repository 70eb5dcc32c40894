"""POST /billing/webhook/: signatures, exactly-once processing, order independence."""

import json
import logging
import time

import pytest
from django.test import Client

from accounts.models import AuditEvent
from billing.models import BillingAccount, StripeEvent
from billing.subscriptions.state import PLAN_CHANGED
from tests.billing.conftest import checkout, deliver, pay
from tests.stripe_fake import event, sign

pytestmark = pytest.mark.django_db


def _plan(owner) -> str:
    owner.organization.refresh_from_db()
    return owner.organization.plan.slug


def _transitions(owner):
    return AuditEvent.objects.filter(organization=owner.organization, action=PLAN_CHANGED)


def test_a_completed_checkout_moves_the_organization_to_its_plan(synced, owner):
    completed = pay(synced, checkout(owner, "pro"))

    response = deliver(Client(), completed)

    assert response.status_code == 200
    assert response.json() == {"received": completed["id"], "duplicate": False}
    assert _plan(owner) == "pro"
    account = BillingAccount.objects.get(organization=owner.organization)
    assert account.subscription_status == "active"
    assert account.subscribed_plan.slug == "pro"
    assert account.current_period_end > account.current_period_start
    assert account.checkout_plan is None  # no longer pending
    (audit,) = _transitions(owner)
    assert audit.actor_label == "stripe"
    assert audit.metadata["event_id"] == completed["id"]
    assert audit.target_label == owner.organization.name  # named, not a slug or an id
    assert (audit.metadata["from"], audit.metadata["to"]) == ("free", "pro")
    stored = StripeEvent.objects.get(stripe_id=completed["id"])
    assert stored.processed_at is not None
    assert stored.organization == owner.organization


@pytest.mark.parametrize(
    "case", ["missing", "wrong secret", "tampered body", "301 seconds old", "garbage"]
)
def test_a_bad_signature_is_400_and_writes_nothing(synced, owner, case):
    completed = pay(synced, checkout(owner, "pro"))
    payload = json.dumps(completed).encode()
    from tests.conftest import WEBHOOK_SECRET

    header = {
        "missing": None,
        "wrong secret": sign(payload, "whsec_not_ours"),
        "tampered body": sign(payload, WEBHOOK_SECRET),
        "301 seconds old": sign(payload, WEBHOOK_SECRET, int(time.time()) - 301),
        "garbage": "t=1,v1=zzz",
    }[case]
    body = payload.replace(b'"complete"', b'"c0mplete"') if case == "tampered body" else payload
    extra = {} if header is None else {"HTTP_STRIPE_SIGNATURE": header}

    response = Client().post(
        "/billing/webhook/", data=body, content_type="application/json", **extra
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()
    assert _plan(owner) == "free"


def test_a_signature_within_300_seconds_is_accepted(synced, owner):
    completed = pay(synced, checkout(owner, "pro"))
    assert deliver(Client(), completed, timestamp=int(time.time()) - 290).status_code == 200


def test_the_same_event_five_times_is_one_transition(synced, owner):
    completed = pay(synced, checkout(owner, "pro"))

    answers = [deliver(Client(), completed).json()["duplicate"] for _ in range(5)]

    assert answers == [False, True, True, True, True]
    assert StripeEvent.objects.filter(stripe_id=completed["id"]).count() == 1
    assert _transitions(owner).count() == 1


def test_an_unknown_event_type_is_200_logged_and_ignored(synced, owner, caplog):
    unknown = event("charge.dispute.created", {"id": "dp_1", "object": "dispute"})

    with caplog.at_level(logging.INFO, logger="billing.subscriptions.webhooks"):
        response = deliver(Client(), unknown)

    assert response.status_code == 200
    assert StripeEvent.objects.get(stripe_id=unknown["id"]).outcome.startswith("ignored")
    assert "charge.dispute.created" in caplog.text
    assert _plan(owner) == "free"


def test_without_stripe_configured_the_webhook_is_404(settings, owner):
    settings.STRIPE_SECRET_KEY = ""
    response = deliver(Client(), event("invoice.paid", {"id": "in_1"}))
    assert response.status_code == 404
    assert not StripeEvent.objects.exists()


def _subscription_event(fake, type_: str, subscription_id: str) -> dict:
    return event(type_, dict(fake.fake.subscriptions[subscription_id]))


def test_events_out_of_order_end_in_stripes_state(synced, owner):
    completed = pay(synced, checkout(owner, "pro"))
    sub_id = completed["data"]["object"]["subscription"]
    created = _subscription_event(synced, "customer.subscription.created", sub_id)
    # Later, Stripe cancels it (the customer cancelled in the portal, the period ended).
    synced.test_call(f"/_test/subscriptions/{sub_id}", status="canceled")
    deleted = _subscription_event(synced, "customer.subscription.deleted", sub_id)

    # Delivered newest first: each one re-reads the subscription, so none resurrects it.
    for delivered in (deleted, completed, created):
        assert deliver(Client(), delivered).status_code == 200

    assert _plan(owner) == "free"
    account = BillingAccount.objects.get(organization=owner.organization)
    assert account.subscription_status == "canceled"


def test_a_late_event_about_an_old_subscription_does_not_touch_the_current_one(synced, owner):
    first = pay(synced, checkout(owner, "starter"))
    deliver(Client(), first)
    old_id = first["data"]["object"]["subscription"]
    synced.test_call(f"/_test/subscriptions/{old_id}", status="canceled")
    deliver(Client(), _subscription_event(synced, "customer.subscription.deleted", old_id))
    second = pay(synced, checkout(owner, "pro"))
    deliver(Client(), second)
    assert _plan(owner) == "pro"

    # Stripe retries an old delivery about the first subscription.
    late = _subscription_event(synced, "customer.subscription.updated", old_id)
    deliver(Client(), late)

    assert _plan(owner) == "pro"
    account = BillingAccount.objects.get(organization=owner.organization)
    assert account.stripe_subscription_id == second["data"]["object"]["subscription"]


def test_a_checkout_for_another_organization_is_refused(synced, owner):
    completed = pay(synced, checkout(owner, "pro"))
    completed["data"]["object"]["client_reference_id"] = str(owner.organization.pk + 1000)

    assert deliver(Client(), completed).status_code == 200

    assert _plan(owner) == "free"
    assert "no organization" in StripeEvent.objects.get(stripe_id=completed["id"]).outcome


def test_the_next_v1_request_after_the_webhook_has_the_new_plans_limits(synced, owner):
    from accounts.actors import Actor
    from keys.services import api_key_create

    issued = api_key_create(
        organization=owner.organization, name="ci", actor=Actor.for_system("test")
    )
    auth = {"HTTP_AUTHORIZATION": f"Bearer {issued.raw_key}"}
    before = Client().get("/v1/key", **auth).json()  # cached: plan and limits
    assert (before["plan"], before["limits"]["requests_per_minute"]) == ("free", 10)

    deliver(Client(), pay(synced, checkout(owner, "pro")))

    after = Client().get("/v1/key", **auth).json()
    assert (after["plan"], after["limits"]["requests_per_minute"]) == ("pro", 300)


def test_customer_updated_is_recorded_on_the_organizations_billing_account(synced, owner):
    checkout(owner, "pro")
    account = BillingAccount.objects.get(organization=owner.organization)
    updated = event("customer.updated", {"id": account.stripe_customer_id, "object": "customer"})

    assert deliver(Client(), updated).status_code == 200

    account.refresh_from_db()
    assert account.last_event_id == updated["id"]
    assert StripeEvent.objects.get(stripe_id=updated["id"]).outcome == "customer updated"


def test_an_event_about_a_customer_we_do_not_know_is_200_and_changes_nothing(synced, owner):
    stranger = event("invoice.paid", {"id": "in_x", "object": "invoice", "customer": "cus_nobody"})

    assert deliver(Client(), stranger).status_code == 200

    stored = StripeEvent.objects.get(stripe_id=stranger["id"])
    assert stored.outcome == "no organization has this Stripe customer"
    assert stored.organization is None
    assert _plan(owner) == "free"
