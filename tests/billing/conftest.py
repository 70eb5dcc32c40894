import json

import pytest

from accounts.actors import Actor
from accounts.models import Role
from billing.subscriptions.services import checkout_session_start
from billing.subscriptions.sync import plans_sync_to_stripe
from tests.conftest import WEBHOOK_SECRET
from tests.stripe_fake import event, sign


@pytest.fixture(autouse=True)
def _key_touches_stay_in_their_test(django_db_blocker):
    """Requests with a key (GET /v1/key) queue a last-used write on a background thread: wait
    for it here, so it never runs during a later test without database access (as
    tests/keys/conftest.py does)."""
    from keys import touch

    touch.reset()
    yield
    with django_db_blocker.unblock():
        touch.flush()
    touch.reset()


@pytest.fixture
def synced(stripe_online, db):
    """Billing online, the plans synced to the fake Stripe."""
    plans_sync_to_stripe()
    return stripe_online


def checkout(owner, plan_slug: str = "pro") -> str:
    """An owner starts a checkout; returns the session id."""
    from billing.models import Plan

    url = checkout_session_start(
        organization=owner.organization,
        plan=Plan.objects.get(slug=plan_slug),
        actor=Actor(user=owner.user, role=Role.OWNER),
        success_url="http://testserver/dashboard/billing/?checkout=success",
        cancel_url="http://testserver/dashboard/billing/",
    )
    return url.rsplit("/", 1)[1]


def pay(fake, session_id: str) -> dict:
    """The customer pays on Stripe's Checkout page: Stripe creates the subscription. Returns the
    `checkout.session.completed` event Stripe would send."""
    session = fake.test_call(f"/_test/checkout/{session_id}/complete")
    return event("checkout.session.completed", session)


def deliver(client, body: dict | bytes, *, secret: str = WEBHOOK_SECRET, timestamp=None, **kw):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"HTTP_STRIPE_SIGNATURE": sign(payload, secret, timestamp)}
    headers.update(kw)
    return client.post(
        "/billing/webhook/", data=payload, content_type="application/json", **headers
    )
