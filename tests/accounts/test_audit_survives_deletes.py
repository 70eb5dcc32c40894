"""The append-only audit log outlives its subjects: deleting an organization, a user or a key
keeps every audit row with the identifiers copied onto it; an organization with usage or keys
cannot be deleted from the admin at all."""

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_list
from accounts.models import AuditAction, AuditEvent, Organization, User
from accounts.services import (
    ORGANIZATION_HAS_KEYS,
    ORGANIZATION_HAS_USAGE,
    organization_delete,
)
from infra.errors import ApplicationError
from keys.models import ApiKey
from keys.services import api_key_create, api_key_revoke
from metering.models import UsageEvent
from metering.quota import quota_reset
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client(client):
    client.force_login(UserFactory(email="root@ops.example", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def alpha():
    """An organization created by mistake: its owner logged in and reset its quota (two audit
    events), no key, no usage."""
    membership = MembershipFactory(
        user__email="alice@alpha.example", organization__slug="alpha", organization__name="Alpha"
    )
    login = Client().post(
        reverse("accounts:login"),
        {"username": "alice@alpha.example", "password": PASSWORD},
        REMOTE_ADDR="203.0.113.7",
    )
    assert login.status_code == 302
    actor = Actor(user=membership.user, role="owner", ip="203.0.113.7")
    quota_reset(membership.organization, actor=actor, reason="mistake")
    return membership


@pytest.fixture
def keyed(alpha):
    """alpha, whose owner then created and revoked a key."""
    actor = Actor(user=alpha.user, role="owner", ip="203.0.113.7")
    issued = api_key_create(organization=alpha.organization, name="ci", actor=actor)
    api_key_revoke(api_key=issued.api_key, actor=actor, reason="done")
    return alpha


def _usage(organization: Organization) -> None:
    UsageEvent.objects.create(
        request_id="req-audit-1",
        organization=organization,
        key_id="abc123",
        model="demo-chat",
        endpoint="chat.completions",
        status_code=200,
        input_tokens=3,
        output_tokens=5,
    )


def _delete_url(organization: Organization) -> str:
    return reverse("admin:accounts_organization_delete", args=[organization.pk])


def test_deleting_an_organization_in_admin_keeps_its_audit_log(operator_client, alpha):
    before = set(
        AuditEvent.objects.filter(organization=alpha.organization).values_list("pk", flat=True)
    )
    assert len(before) == 2  # login.succeeded, quota.reset

    response = operator_client.post(_delete_url(alpha.organization), {"post": "yes"})

    assert response.status_code == 302
    assert not Organization.objects.filter(slug="alpha").exists()
    events = AuditEvent.objects.filter(pk__in=before)
    assert events.count() == 2
    for event in events:
        assert event.organization_id is None
        assert event.organization_slug == "alpha"
        assert event.actor_label == "alice@alpha.example"
        assert str(event.ip) == "203.0.113.7"
    assert {e.target_id for e in events} == {str(alpha.user.pk), f"{timezone.now():%Y-%m}"}
    deleted = AuditEvent.objects.get(action=AuditAction.ORGANIZATION_DELETED)
    assert (deleted.organization_slug, deleted.target_id) == ("alpha", "alpha")
    assert deleted.actor_label == "root@ops.example"
    # The admin's audit log still finds them by the slug.
    page = operator_client.get(reverse("admin:accounts_auditevent_changelist"), {"q": "alpha"})
    assert page.status_code == 200
    assert b"quota.reset" in page.content


def test_an_organization_with_usage_cannot_be_deleted_in_admin(operator_client, alpha):
    _usage(alpha.organization)

    page = operator_client.get(_delete_url(alpha.organization))
    assert page.status_code == 200
    assert b"has recorded usage (1 events)" in page.content
    assert b"Yes, I" not in page.content  # no confirmation button

    response = operator_client.post(_delete_url(alpha.organization), {"post": "yes"})

    assert response.status_code == 200
    assert Organization.objects.filter(slug="alpha").exists()
    assert UsageEvent.objects.filter(organization=alpha.organization).count() == 1
    assert not AuditEvent.objects.filter(action=AuditAction.ORGANIZATION_DELETED).exists()


def test_an_organization_with_keys_cannot_be_deleted_in_admin(operator_client, keyed):
    """Keys are revoked, never deleted: a revoked key's row keeps its organization too."""
    page = operator_client.get(_delete_url(keyed.organization))
    assert b"has 1 API key(s), revoked ones included" in page.content
    assert b"Yes, I" not in page.content

    response = operator_client.post(_delete_url(keyed.organization), {"post": "yes"})

    assert response.status_code == 200
    assert Organization.objects.filter(slug="alpha").exists()
    assert ApiKey.objects.filter(organization=keyed.organization).count() == 1


def test_the_bulk_delete_action_refuses_too(operator_client, alpha):
    other = MembershipFactory(organization__slug="bravo")
    _usage(alpha.organization)

    response = operator_client.post(
        reverse("admin:accounts_organization_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [alpha.organization.pk, other.organization.pk],
            "post": "yes",
        },
    )

    assert response.status_code == 200
    assert b"has recorded usage" in response.content
    assert Organization.objects.filter(slug__in=["alpha", "bravo"]).count() == 2


@pytest.mark.parametrize(
    ("with_usage", "code"), [(True, ORGANIZATION_HAS_USAGE), (False, ORGANIZATION_HAS_KEYS)]
)
def test_organization_delete_refuses_with_a_clear_error(alpha, with_usage, code):
    if with_usage:
        _usage(alpha.organization)
    else:
        api_key_create(organization=alpha.organization, name="p", actor=Actor.for_system("t"))

    with pytest.raises(ApplicationError) as caught:
        organization_delete(organization=alpha.organization, actor=Actor.for_system("t"))

    assert caught.value.code == code
    assert caught.value.status == 409
    assert "alpha" in caught.value.message


def test_deleting_a_user_in_admin_keeps_the_events_they_acted_in(operator_client, keyed):
    user = keyed.user

    response = operator_client.post(
        reverse("admin:accounts_user_delete", args=[user.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not User.objects.filter(pk=user.pk).exists()
    events = audit_list(organization=keyed.organization)
    assert events.count() == 4  # login, quota reset, key created, key revoked
    assert {(e.actor_user_id, e.actor_label) for e in events} == {(None, "alice@alpha.example")}


def test_deleting_a_key_keeps_its_audit_events(keyed):
    key = ApiKey.objects.get(organization=keyed.organization)

    key.delete()  # the admin revokes instead; nothing else may take the audit log with it

    assert AuditEvent.objects.filter(target_id=key.key_id).count() == 2


def test_refusal_audits_by_organization_id_keep_the_slug(alpha):
    from accounts.audit import audit_record

    event = audit_record(
        action=AuditAction.RATE_LIMIT_REFUSED,
        actor=Actor(key_id="abc"),
        organization=Organization(pk=alpha.organization.pk),
    )
    assert event.organization_slug == "alpha"
