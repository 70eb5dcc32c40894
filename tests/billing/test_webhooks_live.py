"""Concurrent deliveries of one event to two live server processes sharing PostgreSQL."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from accounts.models import AuditEvent
from billing.models import StripeEvent
from billing.subscriptions.state import PLAN_CHANGED
from billing.subscriptions.sync import plans_sync_to_stripe
from tests.billing.conftest import checkout, pay
from tests.conftest import WEBHOOK_SECRET
from tests.factories import MembershipFactory
from tests.servers import server_process
from tests.stripe_fake import sign

DELIVERIES = 5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_five_concurrent_deliveries_of_one_event_make_one_transition(stripe_online):
    plans_sync_to_stripe()
    owner = MembershipFactory()
    completed = pay(stripe_online, checkout(owner, "pro"))
    payload = json.dumps(completed).encode()
    env = {
        "STRIPE_SECRET_KEY": "sk_test_suite",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_online.url,
    }
    barrier = threading.Barrier(DELIVERIES)

    with server_process(env) as a, server_process(env) as b:

        def deliver(i: int) -> httpx.Response:
            barrier.wait()
            return httpx.post(
                f"{(a, b)[i % 2]}/billing/webhook/",
                content=payload,
                headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
                timeout=30,
            )

        with ThreadPoolExecutor(DELIVERIES) as pool:
            responses = list(pool.map(deliver, range(DELIVERIES)))

    assert [r.status_code for r in responses] == [200] * DELIVERIES
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 4
    assert StripeEvent.objects.filter(stripe_id=completed["id"]).count() == 1
    transitions = AuditEvent.objects.filter(organization=owner.organization, action=PLAN_CHANGED)
    assert transitions.count() == 1
    owner.organization.refresh_from_db()
    assert owner.organization.plan.slug == "pro"
