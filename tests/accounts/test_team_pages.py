"""The team and settings pages: every form needs its CSRF token, refusals show as messages,
invitations are rate limited, and a role change or removal applies to the person's next
request: their dashboard session and their API keys."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Invitation, Membership, Organization, Role
from keys import touch, verification
from keys.models import ApiKey
from keys.services import api_key_create
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

POSTS = [
    ("dashboard:team_invite", {"email": "x@example.com", "role": "member"}),
    ("dashboard:invitation_resend", {"invitation": "1"}),
    ("dashboard:invitation_revoke", {"invitation": "1"}),
    ("dashboard:member_role", {"membership": "1", "role": "viewer"}),
    ("dashboard:member_remove", {"membership": "1"}),
    ("dashboard:owner_transfer", {"membership": "1"}),
    ("dashboard:settings", {"name": "Renamed"}),
    ("dashboard:organization_leave", {}),
    ("dashboard:organization_delete", {"confirmation": "Acme"}),
]


@pytest.fixture(autouse=True)
def _fresh_key_process_state():
    verification.clear_local()
    touch.reset()
    yield
    touch.flush()
    verification.clear_local()
    touch.reset()


@pytest.fixture
def org() -> Organization:
    return OrganizationFactory(name="Acme", slug="acme")


@pytest.fixture
def owner(org) -> Membership:
    return MembershipFactory(organization=org, role=Role.OWNER, user__email="owner@acme.example")


def logged_in(membership: Membership, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(membership.user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.mark.parametrize(("name", "data"), POSTS)
def test_every_team_form_needs_its_csrf_token(owner, name, data):
    client = logged_in(owner, enforce_csrf_checks=True)
    response = client.post(reverse(name), data)
    assert response.status_code == 403
    assert Organization.objects.get(pk=owner.organization_id).name == "Acme"
    assert not Invitation.objects.exists()


@pytest.mark.parametrize(("name", "data"), [p for p in POSTS if p[0] != "dashboard:settings"])
def test_team_writes_are_post_only(owner, name, data):
    assert logged_in(owner).get(reverse(name)).status_code == 405


def test_the_team_page_shows_controls_by_role(org, owner):
    admin = MembershipFactory(organization=org, role=Role.ADMIN)
    member = MembershipFactory(organization=org, role=Role.MEMBER)
    page = logged_in(owner).get(reverse("dashboard:team")).content.decode()
    assert "Send invitation" in page and "Make owner" in page
    admin_page = logged_in(admin).get(reverse("dashboard:team")).content.decode()
    assert "Send invitation" in admin_page and "Make owner" not in admin_page
    # An admin is offered only the roles they may grant.
    assert '<option value="owner"' not in admin_page
    member_page = logged_in(member).get(reverse("dashboard:team")).content.decode()
    assert "Send invitation" not in member_page and "Change role" not in member_page
    assert owner.user.email in member_page


def test_invite_from_the_page_sends_the_email(owner, mailoutbox):
    client = logged_in(owner)
    response = client.post(
        reverse("dashboard:team_invite"),
        {"email": "ada@example.com", "role": "viewer"},
        follow=True,
    )
    assert "Invitation sent to ada@example.com (Viewer)." in messages_of(response)
    assert len(mailoutbox) == 1
    assert re.search(r"http://testserver/accounts/invitations/\S+/", mailoutbox[0].body)
    assert b"ada@example.com" in client.get(reverse("dashboard:team")).content


def test_an_admin_cannot_invite_an_owner_even_by_forging_the_form(org, mailoutbox):
    admin = MembershipFactory(organization=org, role=Role.ADMIN)
    response = logged_in(admin).post(
        reverse("dashboard:team_invite"), {"email": "ada@example.com", "role": "owner"}
    )
    assert response.status_code == 200  # the form again, with the error
    assert b"Select a valid choice" in response.content
    assert mailoutbox == [] and not Invitation.objects.exists()


def test_a_member_cannot_invite(org, mailoutbox):
    member = MembershipFactory(organization=org, role=Role.MEMBER)
    response = logged_in(member).post(
        reverse("dashboard:team_invite"),
        {"email": "ada@example.com", "role": "viewer"},
        follow=True,
    )
    assert "Only owners and admins manage the team." in messages_of(response)
    assert mailoutbox == []


def test_invitations_are_rate_limited_per_person(owner, settings, mailoutbox):
    settings.RATELIMIT_INVITE = "2/m"
    client = logged_in(owner)
    for n in range(2):
        response = client.post(
            reverse("dashboard:team_invite"), {"email": f"p{n}@example.com", "role": "member"}
        )
        assert response.status_code == 302
    response = client.post(
        reverse("dashboard:team_invite"), {"email": "p9@example.com", "role": "member"}
    )
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    invitation = Invitation.objects.first()
    resend = client.post(reverse("dashboard:invitation_resend"), {"invitation": invitation.pk})
    assert resend.status_code == 429  # resending is sending
    assert len(mailoutbox) == 2


def test_a_refusal_is_a_message_not_an_error_page(org, owner):
    admin = MembershipFactory(organization=org, role=Role.ADMIN)
    response = logged_in(admin).post(
        reverse("dashboard:member_remove"), {"membership": owner.pk}, follow=True
    )
    assert response.status_code == 200
    assert "You cannot grant or act on a role above your own (admin)." in messages_of(response)
    assert Membership.objects.filter(pk=owner.pk).exists()


def _key(membership: Membership, scopes: list[str]) -> str:
    actor = Actor(user=membership.user, role=membership.role)
    return api_key_create(
        organization=membership.organization, name="k", actor=actor, scopes=scopes
    ).raw_key


def test_a_role_change_applies_to_the_next_request(org, owner):
    admin = MembershipFactory(organization=org, role=Role.ADMIN)
    raw = _key(admin, ["inference", "keys:write"])
    api = Client()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert api.get("/api/keys", **bearer).status_code == 200
    admin_session = logged_in(admin)
    assert admin_session.get(reverse("dashboard:audit")).status_code == 200

    logged_in(owner).post(
        reverse("dashboard:member_role"), {"membership": admin.pk, "role": "member"}
    )

    refused = api.get("/api/keys", **bearer)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert api.get("/v1/key", **bearer).json()["scopes"] == ["inference"]
    # The dashboard session too: the audit log is for owners and admins.
    response = admin_session.get(reverse("dashboard:audit"))
    assert response.status_code == 302
    event = AuditEvent.objects.get(action=AuditAction.MEMBER_ROLE_CHANGED)
    assert (event.actor_label, event.target_label) == ("owner@acme.example", admin.user.email)


def test_a_removal_applies_to_the_next_request(org, owner):
    member = MembershipFactory(organization=org, role=Role.MEMBER)
    raw = _key(member, ["inference", "usage:read"])
    api = Client()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert api.get("/v1/usage", **bearer).status_code == 200
    session = logged_in(member)
    assert session.get(reverse("dashboard:team")).status_code == 200

    logged_in(owner).post(reverse("dashboard:member_remove"), {"membership": member.pk})

    assert api.get("/v1/usage", **bearer).status_code == 403
    assert api.get("/v1/key", **bearer).json()["scopes"] == []
    # No organization left: the dashboard offers to create one.
    response = session.get(reverse("dashboard:team"))
    assert response.status_code == 302
    assert response.url == reverse("dashboard:organization_create")


def test_rename_from_the_settings_page(org, owner):
    response = logged_in(owner).post(
        reverse("dashboard:settings"), {"name": "Acme Labs"}, follow=True
    )
    assert "Renamed to Acme Labs." in messages_of(response)
    assert Organization.objects.get(pk=org.pk).name == "Acme Labs"


def test_delete_with_keys_revokes_them_and_keeps_usage_rows_and_audit(org, owner, mailoutbox):
    member = MembershipFactory(organization=org, role=Role.MEMBER)
    raw = _key(owner, ["inference"])
    other = MembershipFactory(user=owner.user, organization=OrganizationFactory(name="Other"))
    client = logged_in(owner)
    client.post(reverse("dashboard:team_invite"), {"email": "ada@example.com", "role": "member"})

    wrong = client.post(
        reverse("dashboard:organization_delete"), {"confirmation": "acme"}, follow=True
    )
    assert "Type the organization's name exactly to confirm." in messages_of(wrong)
    assert Organization.objects.get(pk=org.pk).deleted_at is None

    response = client.post(
        reverse("dashboard:organization_delete"), {"confirmation": "Acme"}, follow=True
    )
    assert "Acme is deleted: its keys are revoked; its audit log is kept." in messages_of(response)
    org.refresh_from_db()
    assert org.deleted_at is not None  # kept: its keys are billing records
    assert not Membership.objects.filter(organization=org).exists()
    assert Membership.objects.filter(pk=other.pk).exists()
    assert Invitation.objects.get().revoked_at is not None
    key = ApiKey.objects.get(organization=org)
    assert key.revoked_at is not None and key.revoked_reason == "organization deleted"
    refused = Client().get("/v1/key", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "key_revoked"
    actions = set(
        AuditEvent.objects.filter(organization_slug="acme").values_list("action", flat=True)
    )
    assert {
        AuditAction.KEY_REVOKED,
        AuditAction.ORGANIZATION_DELETED,
        AuditAction.MEMBER_INVITED,
    } <= actions
    # The owner lands in their other organization; the removed member has none.
    assert response.context["current_organization"].name == "Other"
    assert logged_in(member).get(reverse("dashboard:overview")).status_code == 302


def test_leave_from_the_settings_page(org, owner):
    viewer = MembershipFactory(organization=org, role=Role.VIEWER)
    response = logged_in(viewer).post(reverse("dashboard:organization_leave"), follow=True)
    assert "You left Acme." in messages_of(response)
    assert not Membership.objects.filter(pk=viewer.pk).exists()
    refused = logged_in(owner).post(reverse("dashboard:organization_leave"), follow=True)
    assert any("always keeps an owner" in m for m in messages_of(refused))


def test_the_new_organization_page_keeps_the_navigation(owner):
    page = logged_in(owner).get(reverse("dashboard:organization_create")).content.decode()
    assert 'aria-label="Dashboard"' in page
    assert reverse("dashboard:keys") in page and reverse("dashboard:team") in page


def test_a_closed_organization_is_out_of_reach_of_the_operators_commands(org, owner):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    _key(owner, ["inference"])
    logged_in(owner).post(reverse("dashboard:organization_delete"), {"confirmation": "Acme"})
    assert Organization.objects.get(pk=org.pk).deleted_at is not None
    for command, options in (("create_key", {"name": "x"}), ("set_plan", {"plan": "pro"})):
        with pytest.raises(CommandError, match="No organization with slug 'acme'"):
            call_command(command, org="acme", **options)
    assert ApiKey.objects.filter(organization=org).count() == 1
