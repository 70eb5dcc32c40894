import json

import pytest

from accounts.actors import Actor
from accounts.models import Role
from billing.subscriptions.services import checkout_session_start
from billing.subscriptions.sync import plans_sync_to_stripe
from tests.conftest import WEBHOOK_SECRET
from tests.stripe_fake import event, sign


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
