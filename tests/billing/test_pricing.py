"""billing/pricing.py: exact Decimal costs from ModelPrice, no SQL when warm."""

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from aibaas.gateway.services import model_registry_invalidate, model_seed_demo
from billing import pricing
from billing.models import ModelPrice
from billing.pricing import Price, acost_for, compute_cost, cost_for
from tests.factories import ModelPriceFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def priced(db):
    return ModelPriceFactory(
        model__name="gpt-like",
        input_per_million=Decimal("2.50"),
        output_per_million=Decimal("10.00"),
        cached_input_per_million=Decimal("1.25"),
    )


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "expected"),
    [
        (0, 0, "0E-8"),
        (1_000_000, 0, "2.50000000"),
        (0, 1_000_000, "10.00000000"),
        (1_234, 567, "0.008755"),  # 1234 * 2.5 / 1e6 + 567 * 10 / 1e6
        (1, 0, "0.0000025"),
        (1, 1, "0.0000125"),
        (123_456_789, 987_654_321, "10185.18518250"),
    ],
)
def test_cost_is_exact_decimal_arithmetic(priced, input_tokens, output_tokens, expected):
    cost = cost_for(model="gpt-like", input_tokens=input_tokens, output_tokens=output_tokens)
    assert isinstance(cost, Decimal)
    assert cost == Decimal(expected)
    assert cost.as_tuple().exponent == -8


def test_cost_rounds_half_up_at_eight_places():
    price = Price(Decimal("0.005"), Decimal("0"))
    # 1 token * 0.005 / 1e6 = 0.000000005 -> half up -> 0.00000001
    assert compute_cost(price, input_tokens=1, output_tokens=0) == Decimal("0.00000001")
    # 0.0000000049 -> 0.00000000
    price = Price(Decimal("0.0049"), Decimal("0"))
    assert compute_cost(price, input_tokens=1, output_tokens=0) == Decimal("0E-8")


def test_a_cached_request_pays_the_cached_input_price(priced):
    assert cost_for(
        model="gpt-like", input_tokens=1_000_000, output_tokens=1_000_000, cached=True
    ) == Decimal("11.25")


def test_without_a_cached_price_a_cached_request_pays_the_input_price(priced):
    ModelPrice.objects.filter(pk=priced.pk).update(cached_input_per_million=None)
    model_registry_invalidate()
    assert cost_for(model="gpt-like", input_tokens=1_000_000, output_tokens=0, cached=True) == 2.5


def test_an_unknown_or_unpriced_model_costs_zero(priced, caplog):
    assert cost_for(model="no-such-model", input_tokens=10**6, output_tokens=10**6) == 0
    assert "has no price" in caplog.text
    caplog.clear()
    assert cost_for(model="no-such-model", input_tokens=1, output_tokens=1) == Decimal("0")
    assert "has no price" not in caplog.text  # warned once per process and model


def test_a_warm_cost_makes_no_sql_query(priced, django_assert_num_queries):
    with django_assert_num_queries(1):
        cost_for(model="gpt-like", input_tokens=1, output_tokens=1)
    with django_assert_num_queries(0):
        for n in range(100):
            cost_for(model="gpt-like", input_tokens=n, output_tokens=n)
        cost_for(model="unknown", input_tokens=1, output_tokens=1)
        async_to_sync(acost_for)(model="gpt-like", input_tokens=1, output_tokens=1)


def test_the_async_cost_equals_the_sync_one(priced, django_assert_num_queries):
    with django_assert_num_queries(1):
        cost = async_to_sync(acost_for)(model="gpt-like", input_tokens=1234, output_tokens=567)
    assert cost == cost_for(model="gpt-like", input_tokens=1234, output_tokens=567)


def test_a_price_change_through_the_services_applies_at_once(priced):
    assert cost_for(model="gpt-like", input_tokens=10**6, output_tokens=0) == Decimal("2.5")
    ModelPrice.objects.filter(pk=priced.pk).update(input_per_million=Decimal("3"))
    assert cost_for(model="gpt-like", input_tokens=10**6, output_tokens=0) == Decimal("2.5")
    model_registry_invalidate()
    assert cost_for(model="gpt-like", input_tokens=10**6, output_tokens=0) == Decimal("3")


def test_demo_prices(db):
    model_seed_demo()
    assert cost_for(model="demo-chat", input_tokens=10**6, output_tokens=10**6) == Decimal("2")
    assert cost_for(model="demo-embed", input_tokens=10**6, output_tokens=0) == Decimal("0.02")
    assert pricing.price_for("demo-chat") == Price(Decimal("0.5"), Decimal("1.5"), None)
