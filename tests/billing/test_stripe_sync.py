"""manage.py stripe_sync against the fake Stripe (localstripe + tests/stripe_fake.py)."""

from decimal import Decimal
from io import StringIO

import pytest
import stripe
from django.core.management import CommandError, call_command

from billing.models import Plan

pytestmark = pytest.mark.django_db


def _sync() -> str:
    out = StringIO()
    call_command("stripe_sync", stdout=out)
    return out.getvalue()


def _client(fake) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_suite", base_addresses={"api": fake.url})


def test_without_a_secret_key_stripe_sync_says_billing_is_offline(settings):
    settings.STRIPE_SECRET_KEY = ""
    with pytest.raises(CommandError, match="offline"):
        call_command("stripe_sync")


def test_stripe_sync_creates_a_product_and_monthly_price_per_paid_plan(stripe_online):
    output = _sync()

    client = _client(stripe_online)
    for slug, cents in (("starter", 2900), ("pro", 19900)):
        plan = Plan.objects.get(slug=slug)
        assert plan.stripe_product_id == f"aibaas_{slug}"
        product = client.v1.products.retrieve(plan.stripe_product_id)
        assert product.metadata["plan"] == slug
        price = client.v1.prices.retrieve(plan.stripe_price_id)
        assert (price.unit_amount, price.currency) == (cents, "usd")
        assert price.recurring.interval == "month"
        assert price.lookup_key == f"aibaas_{slug}_monthly"
        assert f"{slug}: monthly price {price.id} created" in output
    # Free costs nothing and enterprise is negotiated: neither is sold through Stripe.
    assert Plan.objects.get(slug="free").stripe_price_id == ""
    assert Plan.objects.get(slug="enterprise").stripe_product_id == ""
    assert "4 change(s) in Stripe." in output  # 2 products + 2 prices, no metered plan


def test_stripe_sync_twice_changes_nothing_and_links_the_same_ids(stripe_online):
    _sync()
    first = list(Plan.objects.values_list("slug", "stripe_product_id", "stripe_price_id"))
    Plan.objects.update(stripe_product_id="", stripe_price_id="")  # a fresh database, say

    output = _sync()

    assert list(Plan.objects.values_list("slug", "stripe_product_id", "stripe_price_id")) == first
    assert "0 change(s) in Stripe." in output
    assert len(stripe_online.fake.prices) == 2  # no duplicates


def test_a_metered_plan_gets_a_meter_and_a_metered_price(stripe_online):
    Plan.objects.filter(slug="pro").update(metered_price_per_million_tokens=Decimal("2.50"))

    output = _sync()
    again = _sync()

    pro = Plan.objects.get(slug="pro")
    client = _client(stripe_online)
    price = client.v1.prices.retrieve(pro.stripe_metered_price_id)
    assert price.recurring.usage_type == "metered"
    assert price.recurring.meter == pro.stripe_meter_id
    assert Decimal(price.unit_amount_decimal) == Decimal("250")  # cents per million tokens
    quantity = price.transform_quantity
    assert (quantity.divide_by, quantity.round) == (1_000_000, "up")
    meter = stripe_online.fake.meters[pro.stripe_meter_id]
    assert meter["event_name"] == "aibaas_tokens"
    assert f"meter {pro.stripe_meter_id} created" in output
    assert "0 change(s) in Stripe." in again
    assert len(stripe_online.fake.meters) == 1
    assert Plan.objects.get(slug="starter").stripe_metered_price_id == ""


def test_a_changed_price_is_a_new_price_that_takes_over_the_lookup_key(stripe_online):
    _sync()
    old = Plan.objects.get(slug="pro").stripe_price_id
    Plan.objects.filter(slug="pro").update(monthly_price=Decimal("249.00"))

    output = _sync()

    pro = Plan.objects.get(slug="pro")
    assert pro.stripe_price_id != old
    assert f"pro: monthly price {pro.stripe_price_id} replaced" in output
    prices = _client(stripe_online).v1.prices.list({"lookup_keys": ["aibaas_pro_monthly"]})
    assert [p.id for p in prices.data] == [pro.stripe_price_id]
    assert prices.data[0].unit_amount == 24900
