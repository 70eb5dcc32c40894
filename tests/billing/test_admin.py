"""The plan admin: a limit edit reaches the plan's keys on their next request; the burst
settings are bounded."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.actors import Actor
from billing.models import Plan
from keys.services import api_key_create
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

PLAN_FIELDS = (
    "name",
    "slug",
    "monthly_price",
    "is_public",
    "sort_order",
    "requests_per_minute",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_day",
    "burst_percent",
    "burst_seconds",
    "monthly_request_quota",
    "monthly_token_quota",
    "max_keys",
)


@pytest.fixture
def operator_client(client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True, password=None))
    return client


def plan_form(plan: Plan, **changes) -> dict:
    """The plan's change form as the admin posts it, with `changes`."""
    data = {}
    for field in PLAN_FIELDS:
        value = getattr(plan, field)
        if isinstance(value, bool):
            if value:
                data[field] = "on"
            continue
        data[field] = "" if value is None else str(value)
    data.update({field: str(value) for field, value in changes.items()})
    return data


def post_plan(operator_client: Client, plan: Plan, **changes):
    return operator_client.post(
        reverse("admin:billing_plan_change", args=[plan.pk]), plan_form(plan, **changes)
    )


def v1_key(raw_key: str) -> dict:
    response = Client().get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_plan_limit_edited_in_admin_applies_to_its_keys_on_the_next_request(
    operator_client, django_capture_on_commit_callbacks
):
    starter = Plan.objects.get(slug="starter")
    organization = MembershipFactory(organization__plan=starter, user__password=None).organization
    raw_key = api_key_create(
        organization=organization, name="prod", actor=Actor.for_system("tests")
    ).raw_key
    assert v1_key(raw_key)["limits"]["requests_per_minute"] == 60  # the context is now cached

    with django_capture_on_commit_callbacks(execute=True):
        response = post_plan(operator_client, starter, requests_per_minute=7, tokens_per_day="")

    assert response.status_code == 302, response.context["adminform"].form.errors
    body = v1_key(raw_key)
    assert (body["limits"]["requests_per_minute"], body["limits"]["tokens_per_day"]) == (7, None)
    assert body["remaining"]["requests_per_minute"] == 7


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("burst_percent", 1001),
        ("burst_percent", 65535),
        ("burst_percent", -1),
        ("burst_seconds", 0),
        ("burst_seconds", 60),
        ("burst_seconds", 600),
    ],
)
def test_plan_admin_refuses_a_burst_setting_out_of_range(operator_client, field, value):
    pro = Plan.objects.get(slug="pro")
    response = post_plan(operator_client, pro, **{field: value})
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    fresh = Plan.objects.get(pk=pro.pk)
    assert (fresh.burst_percent, fresh.burst_seconds) == (pro.burst_percent, pro.burst_seconds)


@pytest.mark.parametrize(("burst_percent", "burst_seconds"), [(0, 1), (1000, 59), (20, 10)])
def test_plan_admin_accepts_burst_settings_at_the_bounds(
    operator_client, burst_percent, burst_seconds
):
    pro = Plan.objects.get(slug="pro")
    response = post_plan(
        operator_client, pro, burst_percent=burst_percent, burst_seconds=burst_seconds
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    fresh = Plan.objects.get(pk=pro.pk)
    assert (fresh.burst_percent, fresh.burst_seconds) == (burst_percent, burst_seconds)
