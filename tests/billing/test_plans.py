import importlib
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from billing.defaults import DEFAULT_PLAN_SLUG, DEFAULT_PLANS, seed_plans
from billing.models import Plan
from billing.services import plan_seed_defaults

pytestmark = pytest.mark.django_db

# DESIGN.md, "Seeded tiers": (requests/min, requests/day, tokens/day); None is unlimited.
DESIGN_TIERS = {
    "free": (10, 100, 10_000),
    "starter": (60, 1_000, 100_000),
    "pro": (300, 10_000, 1_000_000),
    "enterprise": (None, None, None),
}
SEED_MIGRATION = ("billing", "0002_seed_plans")


def _seed_with_the_migration() -> None:
    """Run the seed migration's own code against the historical model it was written for."""
    module = importlib.import_module("billing.migrations.0002_seed_plans")
    state = MigrationLoader(connection).project_state(SEED_MIGRATION)
    module.forwards(state.apps, schema_editor=None)


@pytest.mark.parametrize(("slug", "tier"), DESIGN_TIERS.items())
def test_seeded_plans_have_design_md_limits(slug, tier):
    plan = Plan.objects.get(slug=slug)
    assert (plan.requests_per_minute, plan.requests_per_day, plan.tokens_per_day) == tier


def test_the_seed_migration_is_applied_and_creates_the_four_tiers_in_order():
    assert (
        MigrationRecorder(connection)
        .migration_qs.filter(app=SEED_MIGRATION[0], name=SEED_MIGRATION[1])
        .exists()
    )
    Plan.objects.all().delete()

    _seed_with_the_migration()

    assert list(Plan.objects.values_list("slug", flat=True)) == list(DESIGN_TIERS)
    for slug, tier in DESIGN_TIERS.items():
        plan = Plan.objects.get(slug=slug)
        assert (plan.requests_per_minute, plan.requests_per_day, plan.tokens_per_day) == tier


def test_enterprise_is_unlimited_everywhere_with_a_custom_price():
    enterprise = Plan.objects.get(slug="enterprise")
    assert set(enterprise.limits.values()) == {None}
    assert enterprise.monthly_price is None


def test_paid_tiers_grow_and_free_costs_nothing():
    free, starter, pro = (Plan.objects.get(slug=s) for s in ("free", "starter", "pro"))
    assert free.monthly_price == Decimal("0.00")
    assert DEFAULT_PLAN_SLUG == "free"
    for field in Plan.LIMIT_FIELDS:
        assert getattr(free, field) < getattr(starter, field) < getattr(pro, field), field
    assert free.monthly_price < starter.monthly_price < pro.monthly_price


def test_plan_limits_maps_every_limit_field_to_its_value():
    free = Plan.objects.get(slug="free")
    assert free.limits == {
        "requests_per_minute": 10,
        "requests_per_day": 100,
        "tokens_per_minute": 2_000,
        "tokens_per_day": 10_000,
        "monthly_request_quota": 3_000,
        "monthly_token_quota": 300_000,
        "max_keys": 3,
    }
    free.requests_per_minute = None
    assert free.limits["requests_per_minute"] is None


def test_seed_is_idempotent():
    before = list(Plan.objects.values())
    assert plan_seed_defaults() == 0
    assert seed_plans(Plan) == 0
    _seed_with_the_migration()
    assert list(Plan.objects.values()) == before


def test_seed_never_overwrites_an_operators_edit():
    pro = Plan.objects.get(slug="pro")
    pro.requests_per_minute = 1234
    pro.name = "Pro (legacy)"
    pro.monthly_price = Decimal("149.00")
    pro.save()

    plan_seed_defaults()
    _seed_with_the_migration()

    pro.refresh_from_db()
    assert (pro.requests_per_minute, pro.name, pro.monthly_price) == (
        1234,
        "Pro (legacy)",
        Decimal("149.00"),
    )


def test_seed_recreates_only_a_missing_tier():
    Plan.objects.filter(slug="starter").delete()
    free = Plan.objects.get(slug="free")
    free.tokens_per_day = 1
    free.save()

    assert plan_seed_defaults() == 1

    assert Plan.objects.get(slug="starter").requests_per_minute == 60
    assert Plan.objects.get(slug="free").tokens_per_day == 1
    assert Plan.objects.count() == len(DEFAULT_PLANS)


def test_seed_keeps_plans_an_operator_added():
    Plan.objects.create(slug="academic", name="Academic", requests_per_minute=30)
    plan_seed_defaults()
    assert Plan.objects.get(slug="academic").requests_per_minute == 30
    assert Plan.objects.count() == len(DEFAULT_PLANS) + 1
