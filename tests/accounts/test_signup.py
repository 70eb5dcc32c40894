import pytest
from django.urls import reverse

from accounts.models import Membership, Organization, Role, User
from accounts.services import user_signup
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def signup_data(**overrides):
    data = {
        "email": "ada@example.com",
        "full_name": "Ada Lovelace",
        "organization_name": "Analytical Engines",
        "password": PASSWORD,
    }
    data.update(overrides)
    return data


def test_signup_creates_user_org_on_free_plan_and_owner_membership_then_lands_on_dashboard(client):
    response = client.post(reverse("accounts:signup"), signup_data())

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:overview")
    user = User.objects.get(email="ada@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.name == "Analytical Engines"
    assert membership.organization.slug == "analytical-engines"
    assert membership.organization.plan.slug == "free"
    page = client.get(reverse("dashboard:overview"))
    assert page.status_code == 200
    assert b"Analytical Engines" in page.content
    assert b"Free" in page.content


def test_signup_password_is_hashed_with_argon2(client):
    client.post(reverse("accounts:signup"), signup_data())
    user = User.objects.get(email="ada@example.com")
    assert user.password.startswith("argon2$argon2id$")
    assert PASSWORD not in user.password
    assert user.check_password(PASSWORD)


def test_signup_with_taken_email_shows_error_and_creates_nothing(client):
    UserFactory(email="ada@example.com")
    response = client.post(reverse("accounts:signup"), signup_data(email="ADA@example.com"))
    assert response.status_code == 200
    assert b"already exists" in response.content
    assert Organization.objects.count() == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("email", "not-an-email", b"valid email"),
        ("email", "", b"required"),
        ("password", "", b"required"),
        ("password", "123", b"too short"),
        ("password", "password", b"too common"),
    ],
)
def test_signup_bad_input_is_a_form_error_not_a_500(client, field, value, message):
    response = client.post(reverse("accounts:signup"), signup_data(**{field: value}))
    assert response.status_code == 200
    assert message in response.content
    assert User.objects.count() == 0


def test_signup_is_atomic_when_the_organization_fails(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("accounts.services.organizations.organization_create", broken)
    with pytest.raises(RuntimeError):
        user_signup(email="x@example.com", password=PASSWORD, organization_name="X")
    assert not User.objects.filter(email="x@example.com").exists()


def test_two_signups_with_the_same_organization_name_get_distinct_slugs():
    first = user_signup(email="a@example.com", password=PASSWORD, organization_name="Acme")
    second = user_signup(email="b@example.com", password=PASSWORD, organization_name="Acme")
    assert first.organization.slug == "acme"
    assert second.organization.slug == "acme-2"


def test_signup_without_organization_name_names_it_after_the_user():
    membership = user_signup(
        email="grace@example.com", password=PASSWORD, organization_name="", full_name="Grace"
    )
    assert membership.organization.name == "Grace's organization"
