"""Nobody grants more than they hold (issue 10, item 1): every path that creates, changes or
rotates a key — the API by session, JWT or key; the dashboard; the admin; manage.py — and a
key's power follows its creator's current role."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import Membership, Role
from accounts.services import membership_add
from keys.models import ApiKey
from keys.scopes import ROLE_SCOPES
from keys.services import SCOPE_NOT_HELD
from keys.services.grants import SCOPE_NOT_HELD_MESSAGE
from keys.verification import authenticate_key
from tests.keys.conftest import actor_for, bearer
from tests.keys.test_apis import csrf_session_client, error_of, jwt_pair

pytestmark = pytest.mark.django_db

ALL = ["admin", "inference", "keys:write", "usage:read"]


@pytest.fixture
def team(org, owner, member_factory) -> dict[str, Membership]:
    return {
        Role.OWNER: owner,
        Role.ADMIN: member_factory(organization=org, role=Role.ADMIN),
        Role.MEMBER: member_factory(organization=org, role=Role.MEMBER),
        Role.VIEWER: member_factory(organization=org, role=Role.VIEWER),
    }


class Api:
    """/api as one caller: a session (with CSRF), a JWT, or a key."""

    def __init__(self, client: Client, headers: dict) -> None:
        self.client, self.headers = client, headers

    def get(self, path: str):
        return self.client.get(path, **self.headers)

    def post(self, path: str, data: dict | None = None):
        return self.client.post(path, data or {}, content_type="application/json", **self.headers)

    def patch(self, path: str, data: dict):
        return self.client.patch(path, data, content_type="application/json", **self.headers)


def as_person(kind: str, membership: Membership) -> Api:
    if kind == "session":
        client, token = csrf_session_client(membership.user)
        return Api(client, {"HTTP_X_CSRFTOKEN": token})
    client = Client()
    access = jwt_pair(client, membership.user.email).json()["access"]
    return Api(client, {"HTTP_AUTHORIZATION": f"Bearer {access}"})


def as_key(raw: str) -> Api:
    return Api(Client(), bearer(raw))


def refused(response) -> dict:
    error = error_of(response, 403)
    assert error["code"] == SCOPE_NOT_HELD, error
    return error


@pytest.fixture
def owners_admin_key(make_key, org, team):
    """The owner's admin key, made by the owner through the service."""
    return make_key(org, actor=actor_for(team[Role.OWNER]), name="owner's admin", scopes=["admin"])


@pytest.fixture
def keys_write_key(make_key, org, team):
    """An admin's automation key with keys:write (and inference to hand out)."""
    return make_key(
        org, actor=actor_for(team[Role.ADMIN]), name="ci", scopes=["inference", "keys:write"]
    )


def pre_existing_key(make_key, org, membership, scopes):
    """A key of `membership` with `scopes`, as the escalation left them before the rule."""
    issued = make_key(org, name="escalated", scopes=scopes)
    ApiKey.objects.filter(pk=issued.api_key.pk).update(
        created_by=membership.user, operator_issued=False
    )
    return issued


# --- the grant table -------------------------------------------------------------------------


def test_the_grant_table_is_the_documented_one():
    assert {role: sorted(scopes) for role, scopes in ROLE_SCOPES.items()} == {
        "owner": ALL,
        "admin": ALL,
        "member": ["inference", "usage:read"],
        "viewer": [],
    }


# --- a member, by session and by JWT ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_member_cannot_create_an_admin_key(kind, team):
    member = as_person(kind, team[Role.MEMBER])
    for scopes in (["admin"], ["keys:write"], ["inference", "admin"]):
        error = refused(member.post("/api/keys", {"name": "mine", "scopes": scopes}))
        assert error["param"] == "scopes"
        assert scopes[-1] in error["message"]
    assert not ApiKey.objects.exists()
    # What the role holds, it may grant.
    made = member.post("/api/keys", {"name": "mine", "scopes": ["inference", "usage:read"]})
    assert made.status_code == 201, made.content


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_member_cannot_widen_their_own_key(kind, team):
    member = as_person(kind, team[Role.MEMBER])
    own = member.post("/api/keys", {"name": "mine"}).json()
    refused(member.patch(f"/api/keys/{own['key_id']}", {"scopes": ["admin", "keys:write"]}))
    assert ApiKey.objects.get(key_id=own["key_id"]).scopes == ["inference"]


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_member_cannot_rotate_the_owners_admin_key(kind, team, owners_admin_key):
    member = as_person(kind, team[Role.MEMBER])
    key_id = owners_admin_key.api_key.key_id
    error = error_of(member.post(f"/api/keys/{key_id}/rotate", {"grace_seconds": 0}), 403)
    assert error["code"] in ("forbidden", SCOPE_NOT_HELD)
    assert not ApiKey.objects.filter(rotated_from=owners_admin_key.api_key).exists()
    assert authenticate_key(owners_admin_key.raw_key).key_id == key_id


def test_a_members_pre_existing_admin_key_no_longer_acts_as_an_admin(make_key, org, team):
    escalated = pre_existing_key(make_key, org, team[Role.MEMBER], ["admin", "keys:write"])
    key = as_key(escalated.raw_key)
    assert error_of(key.get("/api/audit"), 403)["code"] == "insufficient_scope"
    assert error_of(key.get("/api/keys"), 403)["code"] == "insufficient_scope"
    # /v1/key tells what the key may do now: what the member's role allows, no more.
    info = key.get("/v1/key")
    assert info.status_code == 200, info.content
    assert info.json()["scopes"] == ["inference", "usage:read"]
    listed = as_person("session", team[Role.OWNER]).get("/api/keys").json()["results"]
    row = next(item for item in listed if item["key_id"] == escalated.api_key.key_id)
    assert row["scopes"] == ["admin", "keys:write"]
    assert row["effective_scopes"] == ["inference", "usage:read"]


def test_a_members_pre_existing_key_keeps_what_the_member_holds(make_key, org, team):
    escalated = pre_existing_key(make_key, org, team[Role.MEMBER], ["admin", "keys:write"])
    assert authenticate_key(escalated.raw_key).scopes == {"inference", "usage:read"}
    assert as_key(escalated.raw_key).get("/v1/usage").status_code == 200


def test_member_may_narrow_a_pre_existing_wide_key_but_not_otherwise_change_it(make_key, org, team):
    escalated = pre_existing_key(make_key, org, team[Role.MEMBER], ["admin", "inference"])
    member = as_person("session", team[Role.MEMBER])
    path = f"/api/keys/{escalated.api_key.key_id}"
    refused(member.patch(path, {"name": "still admin"}))
    refused(member.post(f"{path}/rotate", {"grace_seconds": 0}))
    assert member.patch(path, {"scopes": ["inference"]}).status_code == 200
    assert ApiKey.objects.get(pk=escalated.api_key.pk).scopes == ["inference"]
    assert member.post(f"{path}/revoke").status_code == 200


# --- a viewer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_viewer_can_create_nothing(kind, team):
    viewer = as_person(kind, team[Role.VIEWER])
    for scopes in (["inference"], ["usage:read"], ["admin"]):
        error = error_of(viewer.post("/api/keys", {"name": "v", "scopes": scopes}), 403)
        assert error["code"] in ("insufficient_role", "forbidden")
    assert not ApiKey.objects.exists()


# --- keys acting on keys ----------------------------------------------------------------------


def test_keys_write_key_cannot_create_an_admin_key(keys_write_key):
    key = as_key(keys_write_key.raw_key)
    refused(key.post("/api/keys", {"name": "root", "scopes": ["admin"]}))
    refused(key.post("/api/keys", {"name": "reader", "scopes": ["usage:read"]}))
    assert ApiKey.objects.count() == 1
    made = key.post("/api/keys", {"name": "worker", "scopes": ["inference"]})
    assert made.status_code == 201, made.content


def test_keys_write_key_cannot_widen_itself(keys_write_key):
    key = as_key(keys_write_key.raw_key)
    path = f"/api/keys/{keys_write_key.api_key.key_id}"
    refused(key.patch(path, {"scopes": ["admin", "keys:write"]}))
    assert ApiKey.objects.get(pk=keys_write_key.api_key.pk).scopes == ["inference", "keys:write"]
    assert error_of(key.get("/api/audit"), 403)["code"] == "insufficient_scope"


def test_keys_write_key_cannot_rotate_or_rename_the_owners_admin_key(
    keys_write_key, owners_admin_key
):
    key = as_key(keys_write_key.raw_key)
    path = f"/api/keys/{owners_admin_key.api_key.key_id}"
    refused(key.post(f"{path}/rotate", {"grace_seconds": 0}))
    refused(key.patch(path, {"name": "mine now"}))
    owners = ApiKey.objects.get(pk=owners_admin_key.api_key.pk)
    assert (owners.name, owners.expires_at) == ("owner's admin", None)
    assert not ApiKey.objects.filter(rotated_from=owners).exists()


def test_a_key_made_by_a_key_is_bound_to_that_keys_person(keys_write_key, team):
    made = as_key(keys_write_key.raw_key).post("/api/keys", {"name": "w", "scopes": ["inference"]})
    key = ApiKey.objects.get(key_id=made.json()["key_id"])
    assert (key.created_by, key.operator_issued) == (team[Role.ADMIN].user, False)
    membership_add(organization=team[Role.ADMIN].organization, user=key.created_by, role="viewer")
    assert authenticate_key(made.json()["key"]).scopes == frozenset()


def test_admin_key_manages_everything_the_organization_may_do(
    make_key, org, team, owners_admin_key
):
    admins = make_key(org, actor=actor_for(team[Role.ADMIN]), name="admin's", scopes=["admin"])
    key = as_key(admins.raw_key)
    assert key.get("/api/audit").status_code == 200
    made = key.post("/api/keys", {"name": "root 2", "scopes": ALL})
    assert made.status_code == 201, made.content
    rotated = key.post(f"/api/keys/{owners_admin_key.api_key.key_id}/rotate", {"grace_seconds": 0})
    assert rotated.status_code == 201, rotated.content
    # The successor is bound to the rotating key's person.
    assert ApiKey.objects.get(key_id=rotated.json()["key_id"]).created_by == team[Role.ADMIN].user


# --- the owner ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_owner_can_do_all(kind, team, make_key, org):
    owner = as_person(kind, team[Role.OWNER])
    made = owner.post("/api/keys", {"name": "root", "scopes": ALL})
    assert made.status_code == 201, made.content
    assert made.json()["effective_scopes"] == ALL
    key_id = made.json()["key_id"]
    assert owner.patch(f"/api/keys/{key_id}", {"scopes": ["admin"]}).status_code == 200
    rotated = owner.post(f"/api/keys/{key_id}/rotate", {"grace_seconds": 0})
    assert rotated.status_code == 201, rotated.content
    as_root = as_key(rotated.json()["key"])
    assert as_root.get("/api/audit").status_code == 200
    # Taking over a departed member's key: rotate it, and it is bound to the owner.
    members = make_key(org, actor=actor_for(team[Role.MEMBER]), scopes=["inference"])
    team[Role.MEMBER].delete()
    assert authenticate_key(members.raw_key).scopes == frozenset()
    taken = owner.post(f"/api/keys/{members.api_key.key_id}/rotate", {"grace_seconds": 0})
    assert taken.status_code == 201, taken.content
    assert authenticate_key(taken.json()["key"]).scopes == {"inference"}


# --- the creator's role, now -------------------------------------------------------------------


def test_a_demoted_creators_key_follows_the_demotion_on_the_next_request(make_key, org, team):
    admins = make_key(org, actor=actor_for(team[Role.ADMIN]), scopes=["admin"])
    key = as_key(admins.raw_key)
    assert key.get("/api/audit").status_code == 200  # warm in every cache
    membership_add(organization=org, user=team[Role.ADMIN].user, role=Role.MEMBER)
    assert error_of(key.get("/api/audit"), 403)["code"] == "insufficient_scope"
    assert key.get("/v1/key").json()["scopes"] == ["inference", "usage:read"]
    membership_add(organization=org, user=team[Role.ADMIN].user, role=Role.ADMIN)
    assert key.get("/api/audit").status_code == 200


def test_a_removed_creators_key_can_do_nothing(make_key, org, team):
    members = make_key(org, actor=actor_for(team[Role.MEMBER]), scopes=["usage:read"])
    key = as_key(members.raw_key)
    assert key.get("/v1/usage").status_code == 200
    team[Role.MEMBER].delete()
    assert error_of(key.get("/v1/usage"), 403)["code"] == "insufficient_scope"
    assert key.get("/v1/key").json()["scopes"] == []


def test_a_deleted_creators_key_can_do_nothing(make_key, org, team):
    members = make_key(org, actor=actor_for(team[Role.MEMBER]), scopes=["usage:read"])
    key = as_key(members.raw_key)
    assert key.get("/v1/usage").status_code == 200
    team[Role.MEMBER].user.delete()
    assert error_of(key.get("/v1/usage"), 403)["code"] == "insufficient_scope"


def test_a_demotion_in_the_django_admin_applies_on_the_next_request(
    make_key, org, team, admin_client
):
    admin = team[Role.ADMIN]
    admins = make_key(org, actor=actor_for(admin), scopes=["admin"])
    key = as_key(admins.raw_key)
    assert key.get("/api/audit").status_code == 200
    response = admin_client.post(
        f"/admin/accounts/membership/{admin.pk}/change/",
        {"user": admin.user_id, "organization": org.pk, "role": Role.VIEWER},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert error_of(key.get("/api/audit"), 403)["code"] == "insufficient_scope"


# --- the dashboard and the commands ------------------------------------------------------------


def test_dashboard_form_refuses_scopes_the_member_does_not_hold(client, team):
    client.force_login(team[Role.MEMBER].user)
    response = client.post(
        "/dashboard/keys/new/", {"name": "sneaky", "scopes": ["admin", "keys:write"]}
    )
    assert response.status_code == 200
    assert "Nobody grants more than they hold" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_operator_commands_issue_keys_that_keep_their_scopes(org, team):
    out = StringIO()
    call_command(
        "create_key", "--org", org.slug, "--name", "ops", "--scopes", "admin", "--json", stdout=out
    )
    made = json.loads(out.getvalue())
    key = ApiKey.objects.get(key_id=made["key_id"])
    assert (key.created_by, key.operator_issued) == (None, True)
    assert authenticate_key(made["key"]).scopes == {"admin"}


def test_operator_rotation_keeps_the_keys_person(make_key, org, team):
    members = make_key(org, actor=actor_for(team[Role.MEMBER]), scopes=["inference"])
    out = StringIO()
    call_command("rotate_key", members.api_key.key_id, "--grace", "0", "--json", stdout=out)
    successor = ApiKey.objects.get(rotated_from=members.api_key)
    assert (successor.created_by, successor.operator_issued) == (team[Role.MEMBER].user, False)


def test_the_refusal_message_is_the_constant_one(team):
    member = as_person("jwt", team[Role.MEMBER])
    error = refused(member.post("/api/keys", {"name": "x", "scopes": ["admin"]}))
    assert error["message"] == SCOPE_NOT_HELD_MESSAGE.format(
        missing="admin", held="inference, usage:read"
    )


def test_dashboard_shows_what_a_member_can_grant_and_which_scopes_are_inactive(
    client, make_key, org, team
):
    escalated = pre_existing_key(make_key, org, team[Role.MEMBER], ["admin", "inference"])
    client.force_login(team[Role.MEMBER].user)
    page = client.get("/dashboard/keys/new/").content.decode()
    assert "You can grant: inference, usage:read" in page
    listed = client.get("/dashboard/keys/").content.decode()
    row = listed.split(f'data-key-id="{escalated.api_key.key_id}"')[1].split("</tr>")[0]
    assert "admin (inactive)" in row
    assert "inference (inactive)" not in row


def test_a_deactivated_creators_key_can_do_nothing_until_reactivated(make_key, org, team):
    member = team[Role.MEMBER]
    members = make_key(org, actor=actor_for(member), scopes=["usage:read"])
    key = as_key(members.raw_key)
    assert key.get("/v1/usage").status_code == 200
    member.user.is_active = False
    member.user.save(update_fields=["is_active"])
    assert error_of(key.get("/v1/usage"), 403)["code"] == "insufficient_scope"
    member.user.is_active = True
    member.user.save()
    assert key.get("/v1/usage").status_code == 200


def test_the_admin_shows_a_keys_effective_scopes(make_key, org, team, admin_client):
    escalated = pre_existing_key(make_key, org, team[Role.MEMBER], ["admin", "inference"])
    listed = admin_client.get("/admin/keys/apikey/").content.decode()
    assert "admin (inactive), inference" in listed
    page = admin_client.get(f"/admin/keys/apikey/{escalated.api_key.pk}/change/").content.decode()
    assert "inference, usage:read" in page
