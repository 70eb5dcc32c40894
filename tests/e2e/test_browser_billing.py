"""Upgrading from Free to Pro in a real Chromium: plan card → our Checkout redirect → Stripe's
(fake) hosted page → the completion webhook → the dashboard shows Pro and the key has Pro's
limits on its next request."""

import copy
import json

import httpx
import pytest

from accounts.actors import Actor
from billing.subscriptions.sync import plans_sync_to_stripe
from keys import touch
from keys.services import api_key_create
from tests.billing.conftest import pay
from tests.conftest import WEBHOOK_SECRET
from tests.factories import PASSWORD, MembershipFactory
from tests.stripe_fake import sign

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_upgrade_from_free_to_pro_with_stripe_checkout(web, stripe_online, settings):
    # Production allows Stripe's hosted pages as form targets; here the fake Stripe is that host.
    policy = copy.deepcopy(settings.CONTENT_SECURITY_POLICY)
    policy["DIRECTIVES"]["form-action"] = ["'self'", stripe_online.url]
    settings.CONTENT_SECURITY_POLICY = policy
    plans_sync_to_stripe()
    owner = MembershipFactory()
    issued = api_key_create(organization=owner.organization, name="k", actor=Actor.for_system())

    def v1_key() -> dict:
        headers = {"Authorization": f"Bearer {issued.raw_key}"}
        return httpx.get(f"{web.base_url}/v1/key", headers=headers).json()

    assert v1_key()["limits"]["requests_per_minute"] == 10
    web.log_in(owner.user.email, PASSWORD)
    web.open("/dashboard/billing/")
    web.wait_for_path("/dashboard/billing/")
    assert web.find('[data-testid="billing-plan"]').text == "Free"

    web.find('[data-testid="choose-pro"]').click()
    web.wait(lambda d: d.current_url.startswith(f"{stripe_online.url}/_test/checkout/cs_test_"))
    session_id = web.driver.current_url.rsplit("/", 1)[1]
    session = stripe_online.fake.checkout_sessions[session_id]
    assert session["client_reference_id"] == str(owner.organization.pk)

    # The customer pays; Stripe sends them back before its webhook arrives.
    completed = pay(stripe_online, session_id)
    web.driver.get(session["success_url"])
    web.wait_for_path("/dashboard/billing/")
    assert web.find('[data-testid="checkout-pending"]').is_displayed()
    assert web.find('[data-testid="billing-plan"]').text == "Free"

    payload = json.dumps(completed).encode()
    response = httpx.post(
        f"{web.base_url}/billing/webhook/",
        content=payload,
        headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
    )
    assert response.status_code == 200

    web.open("/dashboard/billing/")
    web.wait_for_path("/dashboard/billing/")
    assert web.find('[data-testid="billing-plan"]').text == "Pro"
    assert not web.find_all('[data-testid="checkout-pending"]')
    assert "Active" in web.find('[data-testid="billing-status"]').text
    key = v1_key()
    assert (key["plan"], key["limits"]["requests_per_minute"]) == ("pro", 300)
    touch.flush()  # the key's last-used write must not land in a later test
