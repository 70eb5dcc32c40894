"""/dashboard/billing/ and its actions: who may pay, Checkout, pending, portal, cancel."""

import re
from datetime import timedelta

import pytest
from django.test import Client

from accounts.models import AuditEvent, Role
from billing.models import BillingAccount
from tests.billing.conftest import deliver, pay
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

PAGE = "/dashboard/billing/"


def _browser(membership) -> Client:
    """A logged-in browser that plays by CSRF's rules."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(membership.user)
    return client


def _post(client: Client, url: str, **data):
    page = client.get(PAGE)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    token = token.group(1) if token else client.cookies["csrftoken"].value
    return client.post(url, {"csrfmiddlewaretoken": token, **data})


def test_offline_the_page_says_operators_set_plans_and_offers_no_checkout(owner_client, settings):
    settings.STRIPE_SECRET_KEY = ""
    page = owner_client.get(PAGE)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="billing-offline"' in html
    assert 'data-testid="billing-plan">Free<' in html
    assert "choose-pro" not in html


def test_online_an_owner_sees_plan_cards_and_this_periods_usage(synced, owner):
    html = _browser(owner).get(PAGE).content.decode()
    assert 'data-testid="choose-starter"' in html
    assert 'data-testid="choose-pro"' in html
    assert 'data-testid="billing-usage"' in html
    assert "choose-free" not in html and "choose-enterprise" not in html  # not for sale


def test_choosing_a_plan_redirects_to_a_stripe_checkout_for_the_organization(synced, owner):
    response = _post(_browser(owner), "/billing/checkout/pro/")

    assert response.status_code == 302
    (session,) = synced.fake.checkout_sessions.values()
    assert response["Location"] == session["url"]
    org = owner.organization
    assert session["client_reference_id"] == str(org.pk)
    assert session["metadata"] == {
        "organization_id": str(org.pk),
        "organization": org.slug,
        "plan": "pro",
    }
    assert (
        session["line_items"][0]["price"]
        == org.plan.__class__.objects.get(slug="pro").stripe_price_id
    )
    account = BillingAccount.objects.get(organization=org)
    assert session["customer"] == account.stripe_customer_id
    assert session["success_url"].endswith("/dashboard/billing/?checkout=success")
    assert AuditEvent.objects.filter(action="billing.checkout_started", target_id="pro").exists()


def test_one_stripe_customer_per_organization_across_checkouts(synced, owner):
    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")
    _post(browser, "/billing/checkout/starter/")

    customers = {s["customer"] for s in synced.fake.checkout_sessions.values()}
    assert len(customers) == 1


def test_returning_from_checkout_shows_pending_until_the_webhook_confirms(synced, owner):
    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")
    (session,) = synced.fake.checkout_sessions.values()
    completed = pay(synced, session["id"])

    back = browser.get(PAGE + "?checkout=success", follow=True).content.decode()
    assert 'data-testid="checkout-pending"' in back
    assert 'data-testid="billing-plan">Free<' in back  # the redirect proves nothing

    deliver(Client(), completed)

    html = browser.get(PAGE).content.decode()
    assert "checkout-pending" not in html
    assert 'data-testid="billing-plan">Pro<' in html
    assert "Active" in html


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.VIEWER, False), (Role.MEMBER, False), (Role.ADMIN, True), (Role.OWNER, True)],
)
def test_only_owners_and_admins_may_start_checkout_or_open_the_portal(synced, role, allowed):
    member = MembershipFactory(role=role)
    browser = _browser(member)

    html = browser.get(PAGE).content.decode()
    checkout = _post(browser, "/billing/checkout/pro/")
    portal = _post(browser, "/billing/portal/")

    assert ('data-testid="choose-pro"' in html) is allowed
    if allowed:
        assert checkout["Location"].startswith(synced.url + "/_test/checkout/")
        assert portal["Location"].startswith(synced.url + "/_test/portal/")
    else:
        assert checkout["Location"] == PAGE and portal["Location"] == PAGE
        assert not synced.fake.checkout_sessions and not synced.fake.portal_sessions
        followed = browser.get(PAGE).content.decode()
        assert "Only owners and admins can change the plan" in followed


def test_a_post_without_the_csrf_token_is_refused(synced, owner):
    response = _browser(owner).post("/billing/checkout/pro/")
    assert response.status_code == 403
    assert not synced.fake.checkout_sessions


def test_checkout_is_post_only(synced, owner):
    assert _browser(owner).get("/billing/checkout/pro/").status_code == 405


def test_cancel_at_period_end_keeps_the_plan_until_then_and_can_be_withdrawn(synced, owner):
    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")
    (session,) = synced.fake.checkout_sessions.values()
    deliver(Client(), pay(synced, session["id"]))

    _post(browser, "/billing/cancel/")

    (subscription,) = synced.fake.subscriptions.values()
    assert subscription["cancel_at_period_end"] is True
    html = browser.get(PAGE).content.decode()
    assert 'data-testid="billing-plan">Pro<' in html  # until the period ends
    assert 'data-testid="resume"' in html
    owner.organization.refresh_from_db()
    assert owner.organization.plan.slug == "pro"

    _post(browser, "/billing/cancel/", resume="1")
    assert subscription["cancel_at_period_end"] is False


def test_a_subscribed_organization_changes_paid_plan_in_the_portal(synced, owner):
    browser = _browser(owner)
    _post(browser, "/billing/checkout/starter/")
    (session,) = synced.fake.checkout_sessions.values()
    deliver(Client(), pay(synced, session["id"]))

    html = browser.get(PAGE).content.decode()
    assert 'data-testid="change-pro"' in html
    assert "choose-pro" not in html
    refused = _post(browser, "/billing/checkout/pro/")
    assert refused["Location"] == PAGE
    assert len(synced.fake.checkout_sessions) == 1


def test_the_policy_lets_billing_forms_redirect_to_stripes_hosted_pages(owner_client):
    # A browser applies form-action to the redirect after a POST: without Stripe's origins the
    # checkout and portal buttons would be blocked (tests/e2e/test_browser_billing.py).
    policy = owner_client.get(PAGE)["Content-Security-Policy"]
    form_action = next(d for d in policy.split(";") if d.strip().startswith("form-action"))
    assert "https://checkout.stripe.com" in form_action
    assert "https://billing.stripe.com" in form_action


def test_coming_back_without_paying_leaves_nothing_pending(synced, owner):
    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")
    assert 'data-testid="checkout-pending"' in browser.get(PAGE).content.decode()

    back = browser.get(PAGE + "?checkout=cancelled", follow=True).content.decode()

    assert "Checkout cancelled" in back
    assert "checkout-pending" not in back


def test_an_abandoned_checkout_is_no_longer_pending_after_a_day(synced, owner):
    import time_machine
    from django.utils import timezone

    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")

    with time_machine.travel(timezone.now() + timedelta(hours=24, minutes=1)):
        html = browser.get(PAGE).content.decode()

    assert "checkout-pending" not in html


def test_the_page_shows_the_card_on_file_and_the_invoices_from_stripe(synced, owner):
    import stripe

    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")
    customer = BillingAccount.objects.get(organization=owner.organization).stripe_customer_id
    client = stripe.StripeClient("sk_test_suite", base_addresses={"api": synced.url})
    card = client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    client.v1.payment_methods.attach(card.id, {"customer": customer})
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": card.id}})
    # localstripe bills its own (pre-Prices) subscriptions: one makes the invoice to list.
    plan = client.v1.plans.create(
        {"amount": 19900, "currency": "usd", "interval": "month", "product": {"name": "x"}}
    )
    client.v1.subscriptions.create({"customer": customer, "items": [{"plan": plan.id}]})

    html = browser.get(PAGE).content.decode()

    assert "•••• 4242, expires 12/2030" in html
    assert 'data-testid="invoices"' in html
    assert "199.00 USD" in html


def test_the_page_works_when_stripe_cannot_be_reached(synced, owner, settings):
    browser = _browser(owner)
    _post(browser, "/billing/checkout/pro/")
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there

    page = browser.get(PAGE)

    assert page.status_code == 200
    assert "Stripe could not be reached" in page.content.decode()


def test_the_cost_of_usage_reads_as_on_the_overview(owner_client, owner, settings):
    # A few cheap requests cost fractions of a cent: "$0.00" here beside "$0.00056202" on the
    # overview read as two different figures.
    from decimal import Decimal

    from django.utils import timezone

    from accounts.actors import Actor
    from keys.services import api_key_create
    from metering.services import usage_record
    from tests.metering.conftest import make_event

    settings.STRIPE_SECRET_KEY = ""
    issued = api_key_create(organization=owner.organization, name="k", actor=Actor.for_system())
    now = timezone.now()
    usage_record(
        events=[make_event(issued, cost=Decimal("0.00028101"), created_at=now) for _ in range(2)]
    )
    billing = owner_client.get(PAGE).content.decode()
    overview = owner_client.get("/dashboard/").content.decode()
    assert 'data-testid="billing-usage-cost">$0.00056202<' in billing
    assert '<span data-live="cost">0.00056202</span>' in overview
