import pytest
from django.test import Client
from django.urls import reverse

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Membership, Organization, User
from billing.models import Plan
from keys.services import api_key_create
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

EMPTY_MEMBERSHIP_INLINE = {
    "memberships-TOTAL_FORMS": "0",
    "memberships-INITIAL_FORMS": "0",
    "memberships-MIN_NUM_FORMS": "0",
    "memberships-MAX_NUM_FORMS": "1000",
}
MODELS = [
    ("accounts", "user"),
    ("accounts", "organization"),
    ("accounts", "membership"),
    ("billing", "plan"),
]


# Only the login tests need a real (and deliberately slow, argon2) password.


@pytest.fixture
def operator_client(client):
    client.force_login(
        UserFactory(email="root@ops.example", is_staff=True, is_superuser=True, password=None)
    )
    return client


@pytest.fixture
def tenants():
    """Two tenants with one owner each, on different plans."""
    alpha = MembershipFactory(
        user__email="alice@alpha.example",
        user__password=None,
        organization__name="Alpha",
        organization__slug="alpha",
    )
    bravo = MembershipFactory(
        user__email="bob@bravo.example",
        user__password=None,
        organization__name="Bravo",
        organization__slug="bravo",
        organization__plan=Plan.objects.get(slug="pro"),
    )
    return alpha, bravo


def _object_for(model: str, tenants) -> object:
    alpha, _ = tenants
    return {
        "user": alpha.user,
        "organization": alpha.organization,
        "membership": alpha,
        "plan": Plan.objects.get(slug="pro"),
    }[model]


def _label(row) -> str:
    """A changelist row as the test names it: users and memberships by email, others by name."""
    if isinstance(row, User):
        return row.email
    if isinstance(row, Membership):
        return row.user.email
    return row.name


@pytest.mark.parametrize(("app", "model"), MODELS)
def test_superuser_opens_every_changelist(operator_client, tenants, app, model):
    response = operator_client.get(reverse(f"admin:{app}_{model}_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 2


@pytest.mark.parametrize(("app", "model"), MODELS)
def test_superuser_opens_every_change_page(operator_client, tenants, app, model):
    obj = _object_for(model, tenants)
    response = operator_client.get(reverse(f"admin:{app}_{model}_change", args=[obj.pk]))
    assert response.status_code == 200
    assert response.context["original"] == obj


@pytest.mark.parametrize(("app", "model"), MODELS)
def test_superuser_opens_every_add_page(operator_client, app, model):
    assert operator_client.get(reverse(f"admin:{app}_{model}_add")).status_code == 200


def test_organization_change_page_shows_its_members_inline(operator_client, tenants):
    alpha, _ = tenants
    MembershipFactory(
        organization=alpha.organization, user__email="second@alpha.example", user__password=None
    )

    response = operator_client.get(
        reverse("admin:accounts_organization_change", args=[alpha.organization.pk])
    )

    assert b'name="memberships-TOTAL_FORMS"' in response.content
    assert b'name="memberships-INITIAL_FORMS" value="2"' in response.content
    assert b"alice@alpha.example" in response.content
    assert b"second@alpha.example" in response.content
    assert b"bob@bravo.example" not in response.content


def test_user_change_page_shows_their_memberships_inline(operator_client, tenants):
    alpha, _ = tenants
    response = operator_client.get(reverse("admin:accounts_user_change", args=[alpha.user.pk]))
    assert b'name="memberships-INITIAL_FORMS" value="1"' in response.content


@pytest.mark.parametrize(
    ("app", "model", "query", "expected"),
    [
        ("accounts", "user", "alice@alpha", ["alice@alpha.example"]),
        ("accounts", "user", "bravo", ["bob@bravo.example"]),  # by organization slug
        ("accounts", "organization", "bravo", ["Bravo"]),
        ("accounts", "organization", "alice@alpha.example", ["Alpha"]),  # by member email
        ("accounts", "membership", "alpha", ["alice@alpha.example"]),
        ("accounts", "membership", "bob@", ["bob@bravo.example"]),
        ("billing", "plan", "starter", ["Starter"]),
    ],
)
def test_admin_search_finds_the_right_rows(operator_client, tenants, app, model, query, expected):
    response = operator_client.get(reverse(f"admin:{app}_{model}_changelist"), {"q": query})

    assert response.status_code == 200
    assert [_label(row) for row in response.context["cl"].result_list] == expected


@pytest.mark.parametrize(
    ("model", "params", "count_attribute"),
    [
        ("user", {"q": "alpha"}, "organization_count"),
        ("user", {"q": "alice", "memberships__role": "owner"}, "organization_count"),
        ("organization", {"q": "alpha"}, "member_total"),
        ("organization", {"q": "second@alpha"}, "member_total"),  # by a member's email
    ],
)
def test_changelist_counts_stay_right_when_searching_or_filtering_through_memberships(
    operator_client, tenants, model, params, count_attribute
):
    alpha, bravo = tenants
    MembershipFactory(user=alpha.user, organization=bravo.organization)
    MembershipFactory(
        user__email="second@alpha.example", user__password=None, organization=alpha.organization
    )

    response = operator_client.get(reverse(f"admin:accounts_{model}_changelist"), params)

    expected_pk = alpha.organization.pk if model == "organization" else alpha.user.pk
    [row] = [r for r in response.context["cl"].result_list if r.pk == expected_pk]
    assert getattr(row, count_attribute) == 2


def test_superuser_can_add_a_user_who_then_logs_in(operator_client, client):
    response = operator_client.post(
        reverse("admin:accounts_user_add"),
        {
            "email": "New.Person@Example.com",
            "full_name": "New Person",
            "password1": PASSWORD,
            "password2": PASSWORD,
            **EMPTY_MEMBERSHIP_INLINE,
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    user = User.objects.get(full_name="New Person")
    assert user.email == "new.person@example.com"
    assert user.check_password(PASSWORD)
    login = client.post(
        reverse("accounts:login"), {"username": "new.person@example.com", "password": PASSWORD}
    )
    assert login.status_code == 302


def test_admin_refuses_a_second_account_differing_only_by_email_case(operator_client, tenants):
    response = operator_client.post(
        reverse("admin:accounts_user_add"),
        {
            "email": "ALICE@alpha.example",
            "full_name": "",
            "password1": PASSWORD,
            "password2": PASSWORD,
            **EMPTY_MEMBERSHIP_INLINE,
        },
    )
    assert response.status_code == 200
    assert b"already exists" in response.content
    assert User.objects.filter(email__iexact="alice@alpha.example").count() == 1


def test_superuser_can_add_a_member_to_an_organization_inline(operator_client, tenants):
    alpha, bravo = tenants
    organization = alpha.organization
    url = reverse("admin:accounts_organization_change", args=[organization.pk])
    data = {
        "name": organization.name,
        "slug": organization.slug,
        "plan": organization.plan_id,
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": alpha.pk,
        "memberships-0-organization": organization.pk,
        "memberships-0-user": alpha.user_id,
        "memberships-0-role": "owner",
        "memberships-1-organization": organization.pk,
        "memberships-1-user": bravo.user_id,
        "memberships-1-role": "viewer",
    }

    response = operator_client.post(url, data)

    assert response.status_code == 302
    assert Membership.objects.get(organization=organization, user=bravo.user).role == "viewer"
    assert Organization.objects.get(pk=organization.pk).memberships.count() == 2


def test_a_plan_in_use_cannot_be_deleted_but_an_unused_one_can(operator_client, tenants):
    pro = Plan.objects.get(slug="pro")  # Bravo is on it
    starter = Plan.objects.get(slug="starter")  # nobody is
    assert operator_client.get(reverse("admin:billing_plan_delete", args=[pro.pk])).status_code == (
        403
    )
    response = operator_client.post(
        reverse("admin:billing_plan_delete", args=[starter.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Plan.objects.filter(slug="starter").exists()


@pytest.mark.parametrize("is_staff", [False, True])
def test_admin_is_closed_to_customers_and_to_staff_without_permissions(client, is_staff):
    client.force_login(UserFactory(is_staff=is_staff, password=None))
    response = client.get(reverse("admin:accounts_organization_changelist"))
    assert response.status_code in (302, 403)


# --- plan changes reach the keys at once -------------------------------------------------------


def _v1_limits(raw_key: str) -> dict:
    response = Client().get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code == 200, response.content
    return response.json()["limits"]


def test_changing_an_organizations_plan_in_admin_applies_to_its_keys_on_the_next_request(
    operator_client, tenants, django_capture_on_commit_callbacks
):
    alpha, _ = tenants
    organization = alpha.organization
    raw_key = api_key_create(
        organization=organization, name="prod", actor=Actor.for_system("tests")
    ).raw_key
    assert _v1_limits(raw_key)["requests_per_minute"] == 10  # free; the context is now cached
    pro = Plan.objects.get(slug="pro")

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            reverse("admin:accounts_organization_change", args=[organization.pk]),
            {
                "name": organization.name,
                "slug": organization.slug,
                "plan": pro.pk,
                **EMPTY_MEMBERSHIP_INLINE,
            },
        )

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Organization.objects.get(pk=organization.pk).plan == pro
    limits = _v1_limits(raw_key)
    assert (limits["requests_per_minute"], limits["requests_per_day"]) == (300, 10_000)
    # The operator's change is in the organization's audit log, with what it moved from.
    [event] = AuditEvent.objects.filter(organization=organization, action=AuditAction.PLAN_CHANGED)
    assert event.metadata == {"from": "free", "to": "pro"}
    assert (event.actor_label, event.target_label) == ("root@ops.example", organization.name)


def test_a_custom_quota_set_in_admin_is_audited_and_applies_to_its_keys(
    operator_client, tenants, django_capture_on_commit_callbacks
):
    alpha, _ = tenants
    organization = alpha.organization
    raw_key = api_key_create(
        organization=organization, name="prod", actor=Actor.for_system("tests")
    ).raw_key
    assert _v1_limits(raw_key)["monthly_token_quota"] == 300_000  # free's; now cached

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            reverse("admin:accounts_organization_change", args=[organization.pk]),
            {
                "name": organization.name,
                "slug": organization.slug,
                "plan": organization.plan.pk,
                "monthly_token_quota": "5000",
                "monthly_request_quota": "",
                **EMPTY_MEMBERSHIP_INLINE,
            },
        )

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert _v1_limits(raw_key)["monthly_token_quota"] == 5000
    [event] = AuditEvent.objects.filter(organization=organization, action=AuditAction.QUOTA_CHANGED)
    assert event.metadata == {"monthly_token_quota": {"from": None, "to": 5000}}
    assert event.actor_label == "root@ops.example"
