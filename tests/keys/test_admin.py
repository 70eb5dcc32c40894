"""The keys admin: no adding, edits and revocations through the audited services."""

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditAction, AuditEvent, Role, User
from keys.models import ApiKey, ApiKeyStatus
from tests.keys.conftest import bearer

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(member_factory) -> Client:
    membership = member_factory(role=Role.OWNER)
    User.objects.filter(pk=membership.user_id).update(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=membership.user_id))
    return client


def change_form(key: ApiKey, **changes) -> dict:
    data = {
        "name": key.name,
        "scopes": '["inference"]',
        "allowed_models": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "requests_per_minute": "",
        "requests_per_day": "",
        "tokens_per_minute": "",
        "tokens_per_day": "",
        "_save": "Save",
    }
    data.update(changes)
    return data


def test_admin_cannot_add_keys(operator):
    assert operator.get("/admin/keys/apikey/add/").status_code == 403


def test_admin_revoke_action_goes_through_the_audited_service(operator, issued):
    response = operator.post(
        "/admin/keys/apikey/",
        {"action": "revoke_selected", "_selected_action": [issued.api_key.pk]},
        follow=True,
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert key.status == ApiKeyStatus.REVOKED
    event = AuditEvent.objects.get(action=AuditAction.KEY_REVOKED)
    assert event.target_id == key.key_id
    response = Client().get("/v1/key", **bearer(issued.raw_key))
    assert response.json()["error"]["code"] == "key_revoked"


def test_admin_edit_goes_through_the_audited_service(operator, issued):
    key = issued.api_key
    response = operator.post(
        f"/admin/keys/apikey/{key.pk}/change/",
        change_form(key, name="renamed", scopes='["usage:read"]', requests_per_minute="4"),
    )
    assert response.status_code == 302, response.content.decode()[:500]
    key.refresh_from_db()
    assert (key.name, key.scopes, key.requests_per_minute) == ("renamed", ["usage:read"], 4)
    event = AuditEvent.objects.get(action=AuditAction.KEY_UPDATED)
    assert set(event.metadata["changes"]) == {"name", "scopes", "requests_per_minute"}
    body = Client().get("/v1/key", **bearer(issued.raw_key)).json()
    assert (body["scopes"], body["limits"]["requests_per_minute"]) == (["usage:read"], 4)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scopes": '["root"]'}, "scopes"),
        ({"scopes": "[]"}, "scopes"),
        ({"allowed_models": '["' + "m" * 201 + '"]'}, "allowed_models"),
        ({"expires_at_0": "2001-01-01", "expires_at_1": "00:00:00"}, "expires_at"),
        ({"name": " "}, "name"),
    ],
    ids=["unknown-scope", "no-scope", "long-model", "past-expiry", "blank-name"],
)
def test_admin_edit_with_a_bad_value_is_a_form_error_not_a_500(operator, issued, changes, field):
    key = issued.api_key
    response = operator.post(f"/admin/keys/apikey/{key.pk}/change/", change_form(key, **changes))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    after = ApiKey.objects.get(pk=key.pk)
    assert (after.name, after.scopes, after.expires_at) == (key.name, ["inference"], None)
    assert not AuditEvent.objects.filter(action=AuditAction.KEY_UPDATED).exists()


@pytest.mark.parametrize("revoked", [False, True])
def test_keys_are_revoked_never_deleted_in_the_admin(operator, issued, revoked):
    key = issued.api_key
    if revoked:
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert operator.get(f"/admin/keys/apikey/{key.pk}/delete/").status_code == 403
    assert operator.post(f"/admin/keys/apikey/{key.pk}/delete/", {"post": "yes"}).status_code == 403
    change = operator.get(f"/admin/keys/apikey/{key.pk}/change/").content.decode()
    assert f"/admin/keys/apikey/{key.pk}/delete/" not in change
    changelist = operator.get("/admin/keys/apikey/")
    actions = [value for value, _ in changelist.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in actions
    assert "revoke_selected" in actions
    response = operator.post(
        "/admin/keys/apikey/",
        {"action": "delete_selected", "_selected_action": [key.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert ApiKey.objects.filter(pk=key.pk).exists()
    if not revoked:
        assert Client().get("/v1/key", **bearer(issued.raw_key)).status_code == 200


def test_admin_revoke_is_audited_with_the_operator_and_their_address(operator, issued):
    operator.post(
        "/admin/keys/apikey/",
        {"action": "revoke_selected", "_selected_action": [issued.api_key.pk]},
        REMOTE_ADDR="198.51.100.77",
        HTTP_USER_AGENT="operator-browser",
    )
    event = AuditEvent.objects.get(action=AuditAction.KEY_REVOKED)
    staff = User.objects.get(is_staff=True)
    assert (event.actor_user, event.ip, event.user_agent) == (
        staff,
        "198.51.100.77",
        "operator-browser",
    )
    assert event.target_id == issued.api_key.key_id
