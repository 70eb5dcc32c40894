"""Management API tokens (JWT) die with the credentials they were issued for: a password change
(dashboard, reset, admin, `manage.py changepassword`) or a logout ends every access and refresh
token of the user, over real HTTP against a live server."""

import re

import httpx
import pytest
from django.contrib.auth.management.commands import changepassword
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from accounts.tokens import TOKEN_REVOKED
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

NEW_PASSWORD = "a-brand-new-passphrase-for-tests-77"


class Api:
    def __init__(self, base_url: str, email: str):
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.email = email

    def obtain(self, password: str = PASSWORD) -> tuple[str, str]:
        response = self.http.post(
            "/api/auth/token", json={"email": self.email, "password": password}
        )
        assert response.status_code == 200, response.text
        return response.json()["access"], response.json()["refresh"]

    def keys(self, access: str) -> httpx.Response:
        return self.http.get("/api/keys", headers={"Authorization": f"Bearer {access}"})

    def refresh(self, refresh: str) -> httpx.Response:
        return self.http.post("/api/auth/token/refresh", json={"refresh": refresh})


@pytest.fixture
def member():
    return MembershipFactory()


@pytest.fixture
def api(live_server, member):
    api = Api(live_server.url, member.user.email)
    yield api
    api.http.close()


def assert_revoked(api: Api, access: str, refresh: str) -> None:
    response = api.keys(access)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == TOKEN_REVOKED
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = api.refresh(refresh)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == TOKEN_REVOKED


def test_tokens_work_until_something_happens(api):
    access, refresh = api.obtain()
    assert api.keys(access).status_code == 200
    fresh = api.refresh(refresh)
    assert fresh.status_code == 200
    assert api.keys(fresh.json()["access"]).status_code == 200


def test_dashboard_password_change_revokes_every_token(api, member):
    access, refresh = api.obtain()
    minted = api.refresh(refresh).json()["access"]
    client = Client()
    client.force_login(member.user)

    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )

    assert response.status_code == 302
    assert_revoked(api, access, refresh)
    assert api.keys(minted).status_code == 401
    # The new password gets working tokens.
    new_access, new_refresh = api.obtain(NEW_PASSWORD)
    assert api.keys(new_access).status_code == 200
    assert api.refresh(new_refresh).status_code == 200


def test_password_reset_revokes_every_token(api, member):
    access, refresh = api.obtain()
    client = Client()
    client.post(reverse("accounts:password_reset"), {"email": member.user.email})
    link = re.search(r"https?://[^/\s]+(/accounts/reset/[^/\s]+/[^/\s]+/)", mail.outbox[0].body)
    landing = client.get(link.group(1))

    done = client.post(
        landing["Location"], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )

    assert done["Location"] == reverse("accounts:password_reset_complete")
    assert_revoked(api, access, refresh)


def test_admin_password_change_revokes_every_token(api, member):
    access, refresh = api.obtain()
    operator = UserFactory(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)

    response = client.post(
        reverse("admin:auth_user_password_change", args=[member.user.pk]),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )

    assert response.status_code == 302, response.content[:2000]
    assert_revoked(api, access, refresh)


def test_manage_py_changepassword_revokes_every_token(api, member, monkeypatch):
    access, refresh = api.obtain()
    # The command reads the new password twice from the terminal; this is what the operator types.
    monkeypatch.setattr(changepassword.getpass, "getpass", lambda prompt="": NEW_PASSWORD)

    call_command("changepassword", member.user.email, stdout=None)

    assert_revoked(api, access, refresh)


def test_api_logout_revokes_every_token_of_the_user(api):
    access, refresh = api.obtain()
    other_access, other_refresh = api.obtain()  # another device

    response = api.http.post("/api/auth/logout", headers={"Authorization": f"Bearer {access}"})

    assert response.status_code == 204
    assert_revoked(api, access, refresh)
    assert_revoked(api, other_access, other_refresh)
    # Logging in again works.
    new_access, _ = api.obtain()
    assert api.keys(new_access).status_code == 200


def test_api_logout_needs_a_user(api):
    response = api.http.post("/api/auth/logout")
    assert response.status_code == 401


def test_dashboard_logout_revokes_every_token(api, member):
    access, refresh = api.obtain()
    client = Client()
    client.force_login(member.user)

    assert client.post(reverse("accounts:logout")).status_code == 302

    assert_revoked(api, access, refresh)


def test_logout_leaves_other_users_tokens_alone(api, live_server):
    other = MembershipFactory()
    other_api = Api(live_server.url, other.user.email)
    other_access, other_refresh = other_api.obtain()
    access, _ = api.obtain()

    api.http.post("/api/auth/logout", headers={"Authorization": f"Bearer {access}"})

    assert other_api.keys(other_access).status_code == 200
    assert other_api.refresh(other_refresh).status_code == 200
    other_api.http.close()


def test_a_token_without_the_version_claim_is_refused(api, member):
    """Tokens minted by plain simplejwt (as before this check existed) do not pass."""
    from rest_framework_simplejwt.tokens import RefreshToken

    refresh = RefreshToken.for_user(member.user)
    assert_revoked(api, str(refresh.access_token), str(refresh))


def test_tokens_of_a_deleted_user_are_refused(api, member):
    access, refresh = api.obtain()

    member.user.delete()

    assert api.keys(access).status_code == 401
    response = api.refresh(refresh)  # was a 500 (DoesNotExist) in simplejwt's serializer
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "no_active_account"
