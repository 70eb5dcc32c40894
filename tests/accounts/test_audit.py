from datetime import UTC, datetime

import pytest
import time_machine
from django.urls import reverse

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditEvent, Role
from tests.factories import PASSWORD, MembershipFactory

pytestmark = pytest.mark.django_db


def test_successful_login_is_audited_with_ip_and_user_agent(client):
    owner = MembershipFactory()
    client.post(
        reverse("accounts:login"),
        {"username": owner.user.email, "password": PASSWORD},
        REMOTE_ADDR="203.0.113.7",
        HTTP_USER_AGENT="pytest-browser/1.0",
    )
    event = AuditEvent.objects.get(action="login.succeeded")
    assert event.organization == owner.organization
    assert event.actor_user == owner.user
    assert event.ip == "203.0.113.7"
    assert event.user_agent == "pytest-browser/1.0"


def test_failed_login_is_audited_without_the_password(client):
    owner = MembershipFactory()
    client.post(
        reverse("accounts:login"),
        {"username": owner.user.email, "password": "wrong-password-123"},
        REMOTE_ADDR="198.51.100.9",
    )
    event = AuditEvent.objects.get(action="login.failed")
    assert event.organization == owner.organization
    assert event.ip == "198.51.100.9"
    assert event.metadata == {"email": owner.user.email}
    assert "wrong-password-123" not in str(AuditEvent.objects.values())


def test_failed_login_for_unknown_email_is_audited_without_organization(client):
    client.post(reverse("accounts:login"), {"username": "nobody@example.com", "password": "x"})
    event = AuditEvent.objects.get(action="login.failed")
    assert event.organization is None
    assert event.metadata == {"email": "nobody@example.com"}


def test_audit_metadata_never_stores_a_key_like_string():
    owner = MembershipFactory()
    leaked = "sk_live_ABCDEFGHIJKL_" + "x" * 49
    event = audit_record(
        action="test.event",
        actor=Actor.for_system(),
        organization=owner.organization,
        metadata={"note": f"user pasted {leaked} here", "nested": [leaked]},
    )
    event.refresh_from_db()
    assert leaked not in str(event.metadata)
    assert "[redacted key]" in event.metadata["note"]


def test_audit_page_shows_only_the_current_organizations_events(client):
    mine = MembershipFactory()
    theirs = MembershipFactory()
    audit_record(
        action="key.created",
        actor=Actor.for_system(),
        organization=mine.organization,
        target_type="api_key",
        target_id="MINEmineMINE",
    )
    audit_record(
        action="key.created",
        actor=Actor.for_system(),
        organization=theirs.organization,
        target_type="api_key",
        target_id="THEIRStheirs",
    )
    client.force_login(mine.user)
    page = client.get(reverse("dashboard:audit"))
    assert page.status_code == 200
    assert b"MINEmineMINE" in page.content
    assert b"THEIRStheirs" not in page.content


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_audit_page_is_for_owners_and_admins_only(client, role):
    membership = MembershipFactory(role=role)
    client.force_login(membership.user)
    response = client.get(reverse("dashboard:audit"))
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:overview")


def test_audit_page_filters_by_action(client):
    owner = MembershipFactory()
    for action in ("key.created", "key.revoked"):
        audit_record(
            action=action,
            actor=Actor.for_system(),
            organization=owner.organization,
            target_id=action,
        )
    client.force_login(owner.user)
    page = client.get(reverse("dashboard:audit"), {"action": "key.revoked"})
    assert b">key.revoked<" in page.content
    assert b">key.created<" not in page.content


# Rate limit windows are clock-aligned: a frozen clock never straddles two (this was flaky).
@time_machine.travel(datetime(2030, 1, 15, 12, 0, 0, tzinfo=UTC), tick=False)
def test_token_endpoint_rate_limit_answers_json_429(client, settings):
    settings.RATELIMIT_LOGIN = "2/m"
    url = reverse("api-token")
    body = {"email": "nobody@example.com", "password": "x"}
    codes = [client.post(url, body, content_type="application/json").status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    response = client.post(url, body, content_type="application/json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response["Retry-After"]) > 0


def test_audit_page_shows_metadata_as_people_read_it(client):
    owner = MembershipFactory()
    audit_record(
        action="key.created",
        actor=Actor.for_system(),
        organization=owner.organization,
        metadata={"scopes": ["inference", "usage:read"], "models": None, "test_mode": False},
    )
    client.force_login(owner.user)
    page = client.get(reverse("dashboard:audit")).content.decode()
    assert "inference, usage:read" in page
    assert "[&#x27;inference&#x27;" not in page and "None" not in page
