import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command
from django.urls import reverse

from accounts.models import User
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-brand-new-passphrase-for-tests-77"
# Rate limit windows are clock-aligned: freeze the clock so a test never straddles two windows.
FROZEN_NOW = datetime(2030, 1, 15, 12, 0, 0, tzinfo=UTC)


def login(client, email, password, **extra):
    return client.post(
        reverse("accounts:login"), {"username": email, "password": password}, **extra
    )


def signup(client, email, **extra):
    data = {"email": email, "full_name": "", "organization_name": "", "password": PASSWORD}
    return client.post(reverse("accounts:signup"), data, **extra)


def reset_link(message) -> str:
    match = re.search(r"https?://testserver(/accounts/reset/[^/\s]+/[^/\s]+/)", message.body)
    assert match, message.body
    return match.group(1)


# --- Login -----------------------------------------------------------------------------------


def test_login_with_email_and_password_lands_on_dashboard(client, owner):
    response = login(client, owner.user.email, PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:overview") == "/dashboard/"
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert owner.organization.name.encode() in page.content


def test_login_email_is_case_insensitive(client, owner):
    response = login(client, owner.user.email.upper(), PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("owner@example.com", "wrong-password"),
        ("owner@example.com", ""),
        ("nobody@example.com", PASSWORD),
        ("", PASSWORD),
    ],
)
def test_login_with_bad_credentials_shows_an_error_and_stays_logged_out(client, email, password):
    MembershipFactory(user__email="owner@example.com")
    response = login(client, email, password)

    assert response.status_code == 200
    assert b"errorlist" in response.content
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("dashboard:overview")).status_code == 302


def test_wrong_password_error_says_so(client, owner):
    response = login(client, owner.user.email, "wrong-password")
    assert b"Please enter a correct email and password" in response.content


def test_inactive_user_cannot_log_in(client):
    membership = MembershipFactory(user__is_active=False)
    response = login(client, membership.user.email, PASSWORD)
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize(
    "next_url", ["https://evil.example.com/", "//evil.example.com/", "http://testserver.evil/"]
)
def test_login_never_redirects_off_site(client, owner, next_url):
    response = client.post(
        reverse("accounts:login"),
        {"username": owner.user.email, "password": PASSWORD, "next": next_url},
    )
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_login_follows_a_local_next(client, owner):
    response = client.post(
        reverse("accounts:login"),
        {"username": owner.user.email, "password": PASSWORD, "next": "/dashboard/team/"},
    )
    assert response["Location"] == "/dashboard/team/"


# --- Rate limits -------------------------------------------------------------------------------


@time_machine.travel(FROZEN_NOW, tick=False)
def test_fourth_login_post_from_one_ip_gets_the_friendly_429_other_ips_still_pass(
    client, owner, settings
):
    settings.RATELIMIT_LOGIN = "3/m"
    for _ in range(3):
        response = login(client, owner.user.email, "wrong-password", REMOTE_ADDR="10.0.0.1")
        assert response.status_code == 200

    # Even the right password is refused once the IP is over its limit.
    blocked = login(client, owner.user.email, PASSWORD, REMOTE_ADDR="10.0.0.1")

    assert blocked.status_code == 429
    assert "429.html" in [t.name for t in blocked.templates]
    assert b"Too many attempts" in blocked.content
    assert 1 <= int(blocked["Retry-After"]) <= 60
    assert "_auth_user_id" not in client.session

    other_ip = login(client, owner.user.email, PASSWORD, REMOTE_ADDR="10.0.0.2")
    assert other_ip.status_code == 302
    assert other_ip["Location"] == "/dashboard/"


@time_machine.travel(FROZEN_NOW, tick=False)
def test_behind_a_proxy_login_limits_count_the_address_the_proxy_saw(client, owner, settings):
    """X-Forwarded-For's left entries are the client's own words: a client that writes a new
    one each time is still counted by the address our proxy appended (and a list of addresses
    is no 500)."""
    settings.RATELIMIT_LOGIN = "3/m"
    settings.CLIENT_IP_PROXIES = ["127.0.0.1/32"]  # the test client is our proxy
    for i in range(3):
        forwarded = f"198.51.100.{i}, 203.0.113.9"
        response = login(client, owner.user.email, "wrong", HTTP_X_FORWARDED_FOR=forwarded)
        assert response.status_code == 200
    spoofed = "198.51.100.99, 203.0.113.9"
    blocked = login(client, owner.user.email, PASSWORD, HTTP_X_FORWARDED_FOR=spoofed)
    assert blocked.status_code == 429
    other = login(client, owner.user.email, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.10")
    assert other.status_code == 302


@time_machine.travel(FROZEN_NOW, tick=False)
def test_login_form_page_itself_is_not_rate_limited(client, settings):
    settings.RATELIMIT_LOGIN = "1/m"
    for _ in range(3):
        assert client.get(reverse("accounts:login"), REMOTE_ADDR="10.0.0.1").status_code == 200


@time_machine.travel(FROZEN_NOW, tick=False)
def test_fourth_signup_post_from_one_ip_gets_the_friendly_429_other_ips_still_pass(
    client, settings
):
    settings.RATELIMIT_SIGNUP = "3/m"
    for n in range(3):
        response = signup(client, f"not-an-email-{n}", REMOTE_ADDR="10.0.0.1")
        assert response.status_code == 200  # form errors, but counted

    blocked = signup(client, "ada@example.com", REMOTE_ADDR="10.0.0.1")

    assert blocked.status_code == 429
    assert "429.html" in [t.name for t in blocked.templates]
    assert b"Too many attempts" in blocked.content
    assert 1 <= int(blocked["Retry-After"]) <= 60
    assert not User.objects.filter(email="ada@example.com").exists()

    other_ip = signup(client, "ada@example.com", REMOTE_ADDR="10.0.0.2")
    assert other_ip.status_code == 302
    assert User.objects.filter(email="ada@example.com").exists()


@pytest.mark.parametrize(
    ("setting", "post"),
    [
        ("RATELIMIT_LOGIN", lambda client: login(client, "x@example.com", "nope")),
        ("RATELIMIT_SIGNUP", lambda client: signup(client, "not-an-email")),
    ],
    ids=["login", "signup"],
)
def test_retry_after_is_when_the_window_really_ends(client, settings, setting, post):
    """Retry-After must be honest for any configured period, not a fixed minute."""
    setting_value = "2/h"
    setattr(settings, setting, setting_value)
    with time_machine.travel(FROZEN_NOW, tick=False) as clock:
        post(client)
        post(client)
        blocked = post(client)
        assert blocked.status_code == 429
        retry_after = int(blocked["Retry-After"])
        assert 1 <= retry_after <= 3600

        clock.move_to(FROZEN_NOW + timedelta(seconds=retry_after - 1))
        assert post(client).status_code == 429

        clock.move_to(FROZEN_NOW + timedelta(seconds=retry_after))
        assert post(client).status_code != 429


# --- Logout and password change ------------------------------------------------------------------


def test_logout_by_post_ends_the_session(owner_client):
    response = owner_client.post(reverse("accounts:logout"))

    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:login")
    page = owner_client.get(reverse("dashboard:overview"))
    assert page.status_code == 302
    assert page["Location"].startswith(reverse("accounts:login"))


def test_logout_by_get_is_refused(owner_client):
    assert owner_client.get(reverse("accounts:logout")).status_code == 405
    assert owner_client.get(reverse("dashboard:overview")).status_code == 200


def test_password_change_keeps_the_session_and_swaps_the_password(client, owner):
    client.force_login(owner.user)
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:password_change_done")
    assert client.get(reverse("dashboard:overview")).status_code == 200
    owner.user.refresh_from_db()
    assert owner.user.check_password(NEW_PASSWORD)
    client.post(reverse("accounts:logout"))
    assert login(client, owner.user.email, PASSWORD).status_code == 200
    assert login(client, owner.user.email, NEW_PASSWORD)["Location"] == "/dashboard/"


@pytest.mark.parametrize(
    ("old", "new1", "new2"),
    [
        ("wrong-old-password", NEW_PASSWORD, NEW_PASSWORD),
        (PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x"),
        (PASSWORD, "short", "short"),
        (PASSWORD, "password", "password"),
    ],
)
def test_password_change_with_bad_input_is_a_form_error(owner_client, owner, old, new1, new2):
    response = owner_client.post(
        reverse("accounts:password_change"),
        {"old_password": old, "new_password1": new1, "new_password2": new2},
    )
    assert response.status_code == 200
    assert b"errorlist" in response.content
    owner.user.refresh_from_db()
    assert owner.user.check_password(PASSWORD)


def test_password_change_needs_login(client):
    response = client.get(reverse("accounts:password_change"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))


# --- Password reset ----------------------------------------------------------------------------


def _reset_and_set_new_password(client, email: str) -> None:
    response = client.post(reverse("accounts:password_reset"), {"email": email})
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:password_reset_done")
    assert len(mail.outbox) == 1

    # Django swaps the token from the link into the session and redirects to a tokenless URL.
    landing = client.get(reset_link(mail.outbox[0]))
    assert landing.status_code == 302
    form_page = client.get(landing["Location"])
    assert form_page.status_code == 200
    assert b"new_password1" in form_page.content
    done = client.post(
        landing["Location"], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert done.status_code == 302
    assert done["Location"] == reverse("accounts:password_reset_complete")


def test_password_reset_mails_one_link_that_sets_a_new_password(client, owner):
    _reset_and_set_new_password(client, owner.user.email)

    message = mail.outbox[0]
    assert message.to == [owner.user.email]
    assert "Reset your aibaas password" in message.subject
    assert login(client, owner.user.email, PASSWORD).status_code == 200
    response = login(client, owner.user.email, NEW_PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_password_reset_link_works_only_once(client, owner):
    _reset_and_set_new_password(client, owner.user.email)
    page = client.get(reset_link(mail.outbox[0]), follow=True)
    assert b"invalid or has already been used" in page.content


def test_password_reset_for_unknown_email_sends_nothing_and_looks_the_same(client, owner):
    known = client.post(reverse("accounts:password_reset"), {"email": owner.user.email})
    mail.outbox.clear()

    unknown = client.post(reverse("accounts:password_reset"), {"email": "nobody@example.com"})

    assert len(mail.outbox) == 0
    assert unknown.status_code == known.status_code == 302
    assert unknown["Location"] == known["Location"] == reverse("accounts:password_reset_done")
    page = client.get(unknown["Location"])
    assert b"Check your email" in page.content


def test_password_reset_lets_an_owner_created_without_password_choose_one(client):
    """`create_org` without --password promises the owner sets one by password reset."""
    call_command("create_org", "--name", "Nopass", "--owner-email", "nopass@example.com")
    assert not User.objects.get(email="nopass@example.com").has_usable_password()

    _reset_and_set_new_password(client, "nopass@example.com")

    assert login(client, "nopass@example.com", NEW_PASSWORD)["Location"] == "/dashboard/"


def test_password_reset_sends_nothing_to_an_inactive_user(client):
    user = UserFactory(is_active=False)
    client.post(reverse("accounts:password_reset"), {"email": user.email})
    assert len(mail.outbox) == 0
