"""Per-key limit overrides only tighten the plan: refused above it by every way in (service,
dashboard, /api/keys, admin, create_key), and capped by the plan when the plan shrinks later."""

import json
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import AuditAction, AuditEvent, Role, User
from accounts.services import organization_set_plan
from billing.models import Plan
from keys.models import ApiKey
from keys.services import LIMIT_ABOVE_PLAN, api_key_create, api_key_rotate, api_key_update
from tests.keys.conftest import actor_for, bearer

pytestmark = pytest.mark.django_db

# The seeded free plan (billing/defaults.py): the organizations of tests/keys/ are on it.
FREE = {
    "requests_per_minute": 10,
    "requests_per_day": 100,
    "tokens_per_minute": 2_000,
    "tokens_per_day": 10_000,
}
WHAT = {
    "requests_per_minute": "requests per minute",
    "requests_per_day": "requests per day",
    "tokens_per_minute": "tokens per minute",
    "tokens_per_day": "tokens per day",
}
LIMITS = list(FREE)


def above_free(field: str) -> str:
    return LIMIT_ABOVE_PLAN.format(limit=FREE[field], plan="Free", what=WHAT[field])


def v1_limits(raw: str) -> dict:
    response = Client().get("/v1/key", **bearer(raw))
    assert response.status_code == 200, response.content
    return response.json()["limits"]


@pytest.fixture
def member(org, member_factory):
    return member_factory(organization=org, role=Role.MEMBER)


@pytest.fixture
def member_client(member) -> Client:
    client = Client()
    client.force_login(member.user)
    return client


# --- the rule, in the service -----------------------------------------------------------------


def test_the_message_names_the_plans_value_and_what_to_do():
    assert above_free("requests_per_minute") == (
        "At most 10, the Free plan's requests per minute; ask for a bigger plan."
    )
    assert above_free("tokens_per_day") == (
        "At most 10,000, the Free plan's tokens per day; ask for a bigger plan."
    )


@pytest.mark.parametrize("field", LIMITS)
def test_create_with_an_override_above_the_plan_is_a_validation_error_on_that_field(
    org, member, field
):
    with pytest.raises(ValidationError) as caught:
        api_key_create(
            organization=org, name="greedy", actor=actor_for(member), **{field: FREE[field] + 1}
        )
    assert caught.value.message_dict == {field: [above_free(field)]}
    assert not ApiKey.objects.exists()


def test_create_names_every_override_above_the_plan_at_once(org, member):
    with pytest.raises(ValidationError) as caught:
        api_key_create(
            organization=org,
            name="greedy",
            actor=actor_for(member),
            **{field: 10**15 for field in LIMITS},
        )
    assert caught.value.message_dict == {field: [above_free(field)] for field in LIMITS}


def test_overrides_at_or_below_the_plan_are_accepted_and_applied(org, member, make_key):
    issued = make_key(
        org,
        actor=actor_for(member),
        requests_per_minute=10,
        requests_per_day=1,
        tokens_per_minute=1_999,
        tokens_per_day=None,
    )
    effective = issued.api_key.effective_limits(org.plan)
    assert [effective[field] for field in LIMITS] == [10, 1, 1_999, 10_000]
    limits = v1_limits(issued.raw_key)
    assert [limits[field] for field in LIMITS] == [10, 1, 1_999, 10_000]


@pytest.mark.parametrize("field", LIMITS)
def test_update_with_an_override_above_the_plan_is_refused_and_changes_nothing(
    org, member, make_key, field
):
    key = make_key(org, actor=actor_for(member)).api_key
    with pytest.raises(ValidationError) as caught:
        api_key_update(api_key=key, actor=actor_for(member), **{field: FREE[field] + 1})
    assert caught.value.message_dict == {field: [above_free(field)]}
    key.refresh_from_db()
    assert getattr(key, field) is None
    assert not AuditEvent.objects.filter(action=AuditAction.KEY_UPDATED).exists()


def test_an_owner_is_held_to_the_plan_too(org, owner):
    with pytest.raises(ValidationError):
        api_key_create(organization=org, name="k", actor=actor_for(owner), requests_per_minute=11)


def test_an_unlimited_plan_accepts_any_override(org, owner, make_key):
    organization_set_plan(organization=org, plan=Plan.objects.get(slug="enterprise"))
    issued = make_key(org, actor=actor_for(owner), **{field: 10**15 for field in LIMITS})
    key = issued.api_key
    assert [getattr(key, field) for field in LIMITS] == [10**15] * 4
    limits = v1_limits(issued.raw_key)
    assert [limits[field] for field in LIMITS] == [10**15] * 4


# --- a plan that shrinks later caps the overrides ---------------------------------------------


def test_effective_limits_after_a_downgrade_are_the_lower_plans(
    org, owner, make_key, django_capture_on_commit_callbacks
):
    pro = Plan.objects.get(slug="pro")
    organization_set_plan(organization=org, plan=pro)
    issued = make_key(
        org,
        actor=actor_for(owner),
        requests_per_minute=200,  # under pro's 300, over free's 10
        requests_per_day=50,  # under both
        tokens_per_minute=50_000,
    )
    assert v1_limits(issued.raw_key)["requests_per_minute"] == 200
    with django_capture_on_commit_callbacks(execute=True):
        organization_set_plan(organization=org, plan=Plan.objects.get(slug="free"))
    limits = v1_limits(issued.raw_key)
    assert [limits[field] for field in LIMITS] == [10, 50, 2_000, 10_000]
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert key.requests_per_minute == 200  # kept: it applies again after an upgrade
    assert key.effective_limits(Plan.objects.get(slug="free"))["requests_per_minute"] == 10


def test_an_override_stored_above_the_plan_is_capped_by_the_plan(org, make_key):
    # Keys written before the rule (or straight into the table) get no more than the plan.
    issued = make_key(org, prime=False)
    ApiKey.objects.filter(pk=issued.api_key.pk).update(**{field: 10**15 for field in LIMITS})
    limits = v1_limits(issued.raw_key)
    assert [limits[field] for field in LIMITS] == list(FREE.values())


def test_a_key_above_a_shrunk_plan_can_still_be_renamed_and_rotated(org, owner, make_key):
    organization_set_plan(organization=org, plan=Plan.objects.get(slug="pro"))
    key = make_key(org, actor=actor_for(owner), requests_per_minute=200).api_key
    organization_set_plan(organization=org, plan=Plan.objects.get(slug="free"))
    key = api_key_update(api_key=key, actor=actor_for(owner), name="renamed")
    issued = api_key_rotate(api_key=key, actor=actor_for(owner))
    assert (issued.api_key.name, issued.api_key.requests_per_minute) == ("renamed", 200)
    assert v1_limits(issued.raw_key)["requests_per_minute"] == 10


# --- every way in ---------------------------------------------------------------------------


def test_member_cannot_raise_a_limit_through_the_dashboard_form(member_client):
    response = member_client.post(
        "/dashboard/keys/new/",
        {"name": "greedy", "scopes": ["inference"], "requests_per_minute": "1000000"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors == {
        "requests_per_minute": [above_free("requests_per_minute")]
    }
    html = response.content.decode()
    assert "At most 10, the Free plan&#x27;s requests per minute" in html
    assert '<details class="field" open>' in html  # the error is not hidden in a closed box
    assert not ApiKey.objects.exists()


def test_dashboard_form_says_what_an_override_does(member_client):
    html = " ".join(member_client.get("/dashboard/keys/new/").content.decode().split())
    assert "they can only lower your plan's limits" in html
    assert "Your Free plan: 10 requests / minute, 100 requests / day, 2,000 tokens / minute" in html


def test_member_cannot_raise_a_limit_through_api_keys_post(member_client):
    response = member_client.post(
        "/api/keys",
        {"name": "greedy", "requests_per_minute": 1_000_000},
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request_error", "requests_per_minute")
    assert error["message"] == above_free("requests_per_minute")
    assert not ApiKey.objects.exists()


def test_member_cannot_raise_a_limit_through_api_keys_patch(member, member_client, make_key, org):
    key = make_key(org, actor=actor_for(member), tokens_per_day=5_000).api_key
    response = member_client.patch(
        f"/api/keys/{key.key_id}", {"tokens_per_day": 10**12}, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["message"]) == ("tokens_per_day", above_free("tokens_per_day"))
    key.refresh_from_db()
    assert key.tokens_per_day == 5_000
    lowered = member_client.patch(
        f"/api/keys/{key.key_id}", {"tokens_per_day": 10_000}, content_type="application/json"
    )
    assert lowered.status_code == 200 and lowered.json()["tokens_per_day"] == 10_000


def test_api_schema_says_an_override_only_lowers_the_plan(db):
    schema = Client().get("/api/schema/", {"format": "json"}).json()["components"]["schemas"]
    for name in ("KeyCreateInputRequest", "PatchedKeyUpdateInputRequest"):
        field = schema[name]["properties"]["requests_per_minute"]
        assert "at most the plan's value" in field["description"]


def test_create_key_command_refuses_an_override_above_the_plan(org):
    with pytest.raises(CommandError) as caught:
        call_command(
            "create_key", "--org", org.slug, "--name", "ci", "--rpm", "11", stdout=StringIO()
        )
    assert str(caught.value) == above_free("requests_per_minute")
    assert not ApiKey.objects.exists()


def test_create_key_command_accepts_an_override_at_the_plan(org):
    out = StringIO()
    call_command(
        "create_key", "--org", org.slug, "--name", "ci", "--tpd", "10000", "--json", stdout=out
    )
    assert json.loads(out.getvalue())["tokens_per_day"] == 10_000


def test_admin_refuses_an_override_above_the_plan(org, owner, make_key):
    User.objects.filter(pk=owner.user_id).update(is_staff=True, is_superuser=True)
    operator = Client()
    operator.force_login(User.objects.get(pk=owner.user_id))
    key = make_key(org).api_key
    response = operator.post(
        f"/admin/keys/apikey/{key.pk}/change/",
        {
            "name": key.name,
            "scopes": '["inference"]',
            "allowed_models": "",
            "expires_at_0": "",
            "expires_at_1": "",
            "requests_per_minute": "11",
            "requests_per_day": "",
            "tokens_per_minute": "",
            "tokens_per_day": "",
            "_save": "Save",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "requests_per_minute": [above_free("requests_per_minute")]
    }
    key.refresh_from_db()
    assert key.requests_per_minute is None
