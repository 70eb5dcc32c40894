"""/api/keys..., /api/auth/token, /api/audit, /api/schema/: auth modes, roles, errors, tenancy."""

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditAction, AuditEvent, Membership, Role
from keys import format as key_format
from keys.models import ApiKey, ApiKeyStatus
from keys.verification import authenticate_key
from tests.factories import PASSWORD, MembershipFactory
from tests.keys.conftest import actor_for, bearer

pytestmark = pytest.mark.django_db

ERROR_FIELDS = {"type", "code", "message", "param"}
KINDS = ["session", "jwt", "key"]
# A key that manages keys and may grant what the tests' keys carry (nobody grants more than
# they hold).
AUTOMATION = ["inference", "keys:write", "usage:read"]


class Caller:
    """One way into /api: a dashboard session (with its CSRF token), a JWT, or an API key."""

    def __init__(self, kind: str, client: Client, headers: dict, key_id: str = "") -> None:
        self.kind = kind
        self.client = client
        self.headers = headers
        self.key_id = key_id

    def get(self, path: str, headers: dict | None = None, **query):
        return self.client.get(path, query, **self.headers, **(headers or {}))

    def post(self, path: str, data: dict | None = None, headers: dict | None = None):
        return self.client.post(
            path, data or {}, content_type="application/json", **self.headers, **(headers or {})
        )

    def patch(self, path: str, data: dict, headers: dict | None = None):
        return self.client.patch(
            path, data, content_type="application/json", **self.headers, **(headers or {})
        )


def jwt_pair(client: Client, email: str, password: str = PASSWORD):
    return client.post(
        "/api/auth/token", {"email": email, "password": password}, content_type="application/json"
    )


def csrf_session_client(user) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/dashboard/keys/")  # any dashboard page sets the CSRF cookie
    return client, client.cookies["csrftoken"].value


@pytest.fixture
def caller_for(make_key):
    """caller_for(kind, membership, scopes=AUTOMATION) -> Caller acting for membership (a key
    is issued by an operator: it holds its scopes whatever the membership's role)."""

    def make(kind: str, membership: Membership, scopes: list[str] | None = None) -> Caller:
        if kind == "session":
            client, token = csrf_session_client(membership.user)
            return Caller(kind, client, {"HTTP_X_CSRFTOKEN": token})
        if kind == "jwt":
            client = Client()
            response = jwt_pair(client, membership.user.email)
            assert response.status_code == 200, response.content
            return Caller(
                kind, client, {"HTTP_AUTHORIZATION": f"Bearer {response.json()['access']}"}
            )
        issued = make_key(membership.organization, name="automation", scopes=scopes or AUTOMATION)
        return Caller(kind, Client(), bearer(issued.raw_key), key_id=issued.api_key.key_id)

    return make


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= ERROR_FIELDS
    assert body["error"]["message"]
    return body["error"]


# --- the whole life of a key, by every kind of caller ----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_key_lifecycle_over_the_api(kind, caller_for, owner):
    caller = caller_for(kind, owner)
    response = caller.post(
        "/api/keys",
        {
            "name": "ci",
            "scopes": ["inference", "usage:read"],
            "models": ["demo-small"],
            "requests_per_minute": 5,
        },
    )
    assert response.status_code == 201, response.content
    created = response.json()
    raw = created["key"]
    assert key_format.parse(raw).key_id == created["key_id"]
    assert created["hint"] == key_format.hint(raw)
    assert created["scopes"] == ["inference", "usage:read"]
    assert created["models"] == ["demo-small"]
    assert created["requests_per_minute"] == 5
    assert created["status"] == ApiKeyStatus.ACTIVE
    assert created["created_by"] == (None if kind == "key" else owner.user.email)
    key_id, pk = created["key_id"], created["id"]

    listed = caller.get("/api/keys")
    assert listed.status_code == 200
    items = listed.json()["results"]
    assert key_id in [item["key_id"] for item in items]
    assert all("key" not in item for item in items)
    assert raw not in listed.content.decode()

    for ident in (pk, key_id):
        read = caller.get(f"/api/keys/{ident}")
        assert read.status_code == 200
        assert read.json()["key_id"] == key_id
        assert "key" not in read.json()

    updated = caller.patch(f"/api/keys/{key_id}", {"name": "ci v2", "tokens_per_day": 999})
    assert updated.status_code == 200, updated.content
    assert (updated.json()["name"], updated.json()["tokens_per_day"]) == ("ci v2", 999)
    assert ApiKey.objects.get(pk=pk).name == "ci v2"

    rotated = caller.post(f"/api/keys/{pk}/rotate", {"grace_seconds": 0})
    assert rotated.status_code == 201, rotated.content
    successor = rotated.json()
    assert successor["rotated_from"] == key_id
    assert successor["key"] != raw
    assert authenticate_key(successor["key"]).key_id == successor["key_id"]
    assert ApiKey.objects.get(pk=pk).status == ApiKeyStatus.EXPIRED

    revoked = caller.post(f"/api/keys/{successor['key_id']}/revoke", {"reason": "done"})
    assert revoked.status_code == 200, revoked.content
    assert (revoked.json()["status"], revoked.json()["revoked_reason"]) == ("revoked", "done")
    assert "key" not in revoked.json()

    only_revoked = caller.get("/api/keys", status="revoked").json()["results"]
    assert [item["key_id"] for item in only_revoked] == [successor["key_id"]]

    events = AuditEvent.objects.filter(target_id__in=[key_id, successor["key_id"]])
    assert set(events.values_list("action", flat=True)) == {
        AuditAction.KEY_CREATED,
        AuditAction.KEY_UPDATED,
        AuditAction.KEY_ROTATED,
        AuditAction.KEY_REVOKED,
    }
    for event in events:
        assert event.ip == "127.0.0.1"
        if kind == "key":
            assert (event.actor_user, event.actor_key_id) == (None, caller.key_id)
        else:
            assert (event.actor_user, event.actor_key_id) == (owner.user, "")


def test_list_is_paginated(caller_for, owner, make_key):
    for number in range(2):
        make_key(owner.organization, name=f"k{number}")
    caller = caller_for("session", owner)
    body = caller.get("/api/keys", limit=1).json()
    assert body["count"] == 2
    assert len(body["results"]) == 1
    assert body["next"]


# --- sessions and CSRF -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("post", "/api/keys", {"name": "no csrf"}),
        ("patch", "/api/keys/{key_id}", {"name": "no csrf"}),
        ("post", "/api/keys/{key_id}/revoke", {}),
        ("post", "/api/keys/{key_id}/rotate", {}),
    ],
    ids=["create", "update", "revoke", "rotate"],
)
def test_session_write_without_csrf_token_is_403_and_changes_nothing(
    owner, issued, method, path, data
):
    client, _token = csrf_session_client(owner.user)
    response = getattr(client, method)(
        path.format(key_id=issued.api_key.key_id), data, content_type="application/json"
    )
    error = error_of(response, 403)
    assert "CSRF" in error["message"]
    key = ApiKey.objects.get()
    assert (key.name, key.status) == ("backend", ApiKeyStatus.ACTIVE)
    assert (
        not AuditEvent.objects.filter(action__startswith="key.")
        .exclude(action=AuditAction.KEY_CREATED)
        .exists()
    )


def test_session_write_with_a_wrong_csrf_token_is_403(owner):
    client, _token = csrf_session_client(owner.user)
    response = client.post(
        "/api/keys", {"name": "x"}, content_type="application/json", HTTP_X_CSRFTOKEN="x" * 32
    )
    error_of(response, 403)
    assert not ApiKey.objects.exists()


def test_session_read_needs_no_csrf_token(owner, issued):
    client, _token = csrf_session_client(owner.user)
    assert client.get("/api/keys").status_code == 200


# --- JWT -------------------------------------------------------------------------------------


def test_token_endpoint_gives_an_access_and_a_refresh_token(owner):
    response = jwt_pair(Client(), owner.user.email)
    assert response.status_code == 200
    assert set(response.json()) >= {"access", "refresh"}


def test_token_endpoint_accepts_the_email_in_any_case(owner):
    assert jwt_pair(Client(), owner.user.email.upper()).status_code == 200


@pytest.mark.parametrize(
    ("credentials", "status", "param"),
    [
        ({"email": "nobody@example.com", "password": PASSWORD}, 401, None),
        ({"email": "owner", "password": "wrong"}, 401, None),
        ({"email": "owner", "password": ""}, 400, "password"),
        ({"email": "", "password": PASSWORD}, 400, "email"),
        ({}, 400, "email"),
    ],
    ids=["unknown-user", "wrong-password", "empty-password", "empty-email", "missing"],
)
def test_token_endpoint_refuses_bad_credentials(owner, credentials, status, param):
    if credentials.get("email") == "owner":
        credentials = {**credentials, "email": owner.user.email}
    response = Client().post("/api/auth/token", credentials, content_type="application/json")
    error = error_of(response, status)
    assert error["param"] == param
    assert "access" not in response.json()
    assert PASSWORD not in json.dumps(error)


def test_refresh_token_gives_a_working_access_token(owner, issued):
    client = Client()
    refresh = jwt_pair(client, owner.user.email).json()["refresh"]
    response = client.post(
        "/api/auth/token/refresh", {"refresh": refresh}, content_type="application/json"
    )
    assert response.status_code == 200
    access = response.json()["access"]
    listed = Client().get("/api/keys", HTTP_AUTHORIZATION=f"Bearer {access}")
    assert listed.status_code == 200
    assert listed.json()["count"] == 1


def test_refresh_endpoint_refuses_an_access_token(owner):
    access = jwt_pair(Client(), owner.user.email).json()["access"]
    response = Client().post(
        "/api/auth/token/refresh", {"refresh": access}, content_type="application/json"
    )
    error_of(response, 401)


def test_expired_access_token_is_401_so_clients_know_to_refresh(owner, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    access = jwt_pair(Client(), owner.user.email).json()["access"]
    time_machine.move_to(now + timedelta(hours=1), tick=False)
    response = Client().get("/api/keys", HTTP_AUTHORIZATION=f"Bearer {access}")
    error_of(response, 401)
    assert response.has_header("WWW-Authenticate")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-jwt", "Bearer a.b.c", "Bearer ", "Token abc", "Bearer " + "x" * 5000],
)
def test_garbage_credentials_on_the_management_api_are_401(db, authorization):
    response = Client().get("/api/keys", HTTP_AUTHORIZATION=authorization)
    error_of(response, 401)
    assert response.has_header("WWW-Authenticate")


def test_no_credentials_on_the_management_api_is_401(db):
    response = Client().get("/api/keys")
    error = error_of(response, 401)
    assert error["type"] == "authentication_error"
    assert response.has_header("WWW-Authenticate")


def test_a_deactivated_user_loses_jwt_access(owner):
    access = jwt_pair(Client(), owner.user.email).json()["access"]
    owner.user.is_active = False
    owner.user.save()
    response = Client().get("/api/keys", HTTP_AUTHORIZATION=f"Bearer {access}")
    error_of(response, 401)


# --- API keys on the management API ----------------------------------------------------------


@pytest.mark.parametrize("scopes", [["keys:write"], ["admin"], ["inference", "keys:write"]])
def test_api_key_with_keys_write_or_admin_manages_keys(caller_for, owner, scopes):
    caller = caller_for("key", owner, scopes=scopes)
    assert caller.get("/api/keys").status_code == 200
    made = caller.post("/api/keys", {"name": "from a key", "scopes": ["keys:write"]})
    assert made.status_code == 201, made.content


@pytest.mark.parametrize("scopes", [["inference"], ["usage:read"], ["inference", "usage:read"]])
def test_api_key_without_keys_write_is_403_insufficient_scope(caller_for, owner, issued, scopes):
    caller = caller_for("key", owner, scopes=scopes)
    for response in (
        caller.get("/api/keys"),
        caller.post("/api/keys", {"name": "nope"}),
        caller.get(f"/api/keys/{issued.api_key.key_id}"),
        caller.post(f"/api/keys/{issued.api_key.key_id}/revoke"),
    ):
        assert error_of(response, 403)["code"] == "insufficient_scope"
    assert ApiKey.objects.filter(name="nope").count() == 0
    assert ApiKey.objects.get(pk=issued.api_key.pk).status == ApiKeyStatus.ACTIVE


@pytest.mark.parametrize(
    ("prepare", "code"),
    [
        (
            lambda key, now: key.__class__.objects.filter(pk=key.pk).update(revoked_at=now),
            "key_revoked",
        ),
        (
            lambda key, now: key.__class__.objects.filter(pk=key.pk).update(expires_at=now),
            "key_expired",
        ),
    ],
    ids=["revoked", "expired"],
)
def test_revoked_or_expired_api_key_on_the_management_api_is_401(make_key, org, prepare, code):
    issued = make_key(org, scopes=["keys:write"])
    prepare(issued.api_key, timezone.now())
    response = Client().get("/api/keys", **bearer(issued.raw_key))
    assert error_of(response, 401)["code"] == code
    assert response.has_header("WWW-Authenticate")


def test_malformed_api_key_on_the_management_api_is_401_invalid_api_key(db):
    response = Client().get("/api/keys", **bearer("sk_live_" + "x" * 62))
    assert error_of(response, 401)["code"] == "invalid_api_key"


# --- roles -----------------------------------------------------------------------------------


@pytest.fixture
def team(org, owner, member_factory) -> dict[str, Membership]:
    return {
        Role.OWNER: owner,
        Role.ADMIN: member_factory(organization=org, role=Role.ADMIN),
        Role.MEMBER: member_factory(organization=org, role=Role.MEMBER),
        Role.VIEWER: member_factory(organization=org, role=Role.VIEWER),
    }


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_viewer_reads_but_cannot_write(kind, caller_for, team, make_key, org):
    key = make_key(org, actor=actor_for(team[Role.OWNER])).api_key
    viewer = caller_for(kind, team[Role.VIEWER])
    assert viewer.get("/api/keys").json()["count"] == 1
    assert viewer.get(f"/api/keys/{key.key_id}").status_code == 200
    for response in (
        viewer.post("/api/keys", {"name": "mine"}),
        viewer.patch(f"/api/keys/{key.key_id}", {"name": "mine"}),
        viewer.post(f"/api/keys/{key.key_id}/revoke"),
        viewer.post(f"/api/keys/{key.key_id}/rotate"),
    ):
        assert error_of(response, 403)["code"] == "insufficient_role"
    key.refresh_from_db()
    assert (key.name, key.status) == ("test key", ApiKeyStatus.ACTIVE)
    assert ApiKey.objects.count() == 1


def test_member_manages_own_keys_only(caller_for, team, make_key, org):
    theirs = make_key(org, actor=actor_for(team[Role.OWNER]), name="owner's").api_key
    member = caller_for("session", team[Role.MEMBER])
    own = member.post("/api/keys", {"name": "member's"}).json()
    assert member.patch(f"/api/keys/{own['key_id']}", {"name": "renamed"}).status_code == 200
    rotated = member.post(f"/api/keys/{own['key_id']}/rotate", {"grace_seconds": 0})
    assert rotated.status_code == 201
    assert member.post(f"/api/keys/{rotated.json()['key_id']}/revoke").status_code == 200
    for response in (
        member.patch(f"/api/keys/{theirs.key_id}", {"name": "mine now"}),
        member.post(f"/api/keys/{theirs.key_id}/revoke"),
        member.post(f"/api/keys/{theirs.key_id}/rotate"),
    ):
        assert error_of(response, 403)["code"] == "forbidden"
    theirs.refresh_from_db()
    assert (theirs.name, theirs.status) == ("owner's", ApiKeyStatus.ACTIVE)
    assert not ApiKey.objects.filter(rotated_from=theirs).exists()


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owner_and_admin_manage_every_key(role, caller_for, team, make_key, org):
    members_key = make_key(org, actor=actor_for(team[Role.MEMBER])).api_key
    admin = caller_for("session", team[role])
    assert admin.patch(f"/api/keys/{members_key.pk}", {"name": "renamed"}).status_code == 200
    assert admin.post(f"/api/keys/{members_key.pk}/revoke").status_code == 200
    members_key.refresh_from_db()
    assert members_key.status == ApiKeyStatus.REVOKED


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": None}, "name"),
        ({"name": "k", "scopes": ["root"]}, "scopes"),
        ({"name": "k", "scopes": "inference"}, "scopes"),
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k", "models": ["m" * 201]}, "models"),
        ({"name": "k", "models": "demo-small"}, "models"),
        ({"name": "k", "requests_per_minute": 0}, "requests_per_minute"),
        ({"name": "k", "requests_per_day": "many"}, "requests_per_day"),
        ({"name": "k", "tokens_per_day": 10**16}, "tokens_per_day"),
        ({"name": "k", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "k", "test_mode": "perhaps"}, "test_mode"),
    ],
    ids=lambda value: json.dumps(value)[:50] if isinstance(value, dict) else value,
)
def test_bad_create_input_is_400_naming_the_param(owner_client, data, param):
    response = owner_client.post("/api/keys", data, content_type="application/json")
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request_error"
    assert error["param"] == param or error["param"].startswith(f"{param}[")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    ("path", "data", "param"),
    [
        ("/api/keys/{key_id}", {"name": ""}, "name"),
        ("/api/keys/{key_id}", {"scopes": ["keys:delete"]}, "scopes"),
        ("/api/keys/{key_id}", {"tokens_per_minute": -5}, "tokens_per_minute"),
        ("/api/keys/{key_id}", {"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ("/api/keys/{key_id}/revoke", {"reason": "r" * 501}, "reason"),
        ("/api/keys/{key_id}/rotate", {"grace_seconds": -1}, "grace_seconds"),
        ("/api/keys/{key_id}/rotate", {"grace_seconds": "soon"}, "grace_seconds"),
        ("/api/keys/{key_id}/rotate", {"grace_seconds": 10**9}, "grace_seconds"),
    ],
)
def test_bad_change_input_is_400_naming_the_param(owner_client, issued, path, data, param):
    path = path.format(key_id=issued.api_key.key_id)
    if path.endswith(("revoke", "rotate")):
        response = owner_client.post(path, data, content_type="application/json")
    else:
        response = owner_client.patch(path, data, content_type="application/json")
    assert error_of(response, 400)["param"] == param
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert (key.name, key.status, key.scopes) == ("backend", ApiKeyStatus.ACTIVE, ["inference"])
    assert ApiKey.objects.count() == 1


def test_malformed_json_is_400(owner_client):
    response = owner_client.post("/api/keys", "{not json", content_type="application/json")
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"


def test_unknown_status_filter_is_400_naming_status(owner_client):
    assert error_of(owner_client.get("/api/keys?status=lost"), 400)["param"] == "status"


@pytest.mark.parametrize(
    "ident", ["999999", "AAAAAAAAAAAA", "nope", "1" * 40, "-1", "%F0%9F%94%91", "²", "①", "٣"]
)
def test_unknown_key_is_404_key_not_found(owner_client, ident):
    error = error_of(owner_client.get(f"/api/keys/{ident}"), 404)
    assert (error["type"], error["code"]) == ("not_found_error", "key_not_found")


def test_unsupported_method_is_405_in_the_error_shape(owner_client, issued):
    error_of(owner_client.delete(f"/api/keys/{issued.api_key.key_id}"), 405)
    assert ApiKey.objects.get(pk=issued.api_key.pk).status == ApiKeyStatus.ACTIVE


def test_creating_past_the_plans_cap_is_403_key_limit_reached(owner_client, make_key, org):
    for number in range(3):
        make_key(org, name=f"k{number}")
    error = error_of(
        owner_client.post("/api/keys", {"name": "fourth"}, content_type="application/json"), 403
    )
    assert error["code"] == "key_limit_reached"


def test_rotating_twice_is_409_key_already_rotated(owner_client, issued):
    path = f"/api/keys/{issued.api_key.key_id}/rotate"
    assert owner_client.post(path, {}, content_type="application/json").status_code == 201
    error = error_of(owner_client.post(path, {}, content_type="application/json"), 409)
    assert error["code"] == "key_already_rotated"


def test_rotating_a_revoked_key_is_409_key_not_active(owner_client, issued):
    key_id = issued.api_key.key_id
    owner_client.post(f"/api/keys/{key_id}/revoke", {}, content_type="application/json")
    error = error_of(
        owner_client.post(f"/api/keys/{key_id}/rotate", {}, content_type="application/json"), 409
    )
    assert error["code"] == "key_not_active"


def test_revoking_twice_over_the_api_is_idempotent(owner_client, issued):
    path = f"/api/keys/{issued.api_key.key_id}/revoke"
    first = owner_client.post(path, {"reason": "a"}, content_type="application/json").json()
    second = owner_client.post(path, {"reason": "b"}, content_type="application/json").json()
    assert first["revoked_at"] == second["revoked_at"]
    assert second["revoked_reason"] == "a"
    assert AuditEvent.objects.filter(action=AuditAction.KEY_REVOKED).count() == 1


# --- tenancy: no object of another organization is reachable ---------------------------------

FOREIGN_ENDPOINTS = {
    "read": ("get", "/api/keys/{ident}", None),
    "update": ("patch", "/api/keys/{ident}", {"name": "pwned", "scopes": ["admin"]}),
    "revoke": ("post", "/api/keys/{ident}/revoke", {"reason": "pwned"}),
    "rotate": ("post", "/api/keys/{ident}/rotate", {"grace_seconds": 0}),
}


@pytest.fixture
def foreign(make_key, other_owner):
    """A key of another organization, and what it looked like."""
    issued = make_key(
        other_owner.organization, actor=actor_for(other_owner), name="their secret project"
    )
    return issued


@pytest.mark.parametrize("endpoint", FOREIGN_ENDPOINTS, ids=FOREIGN_ENDPOINTS.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_another_organizations_key_is_404_and_unchanged(kind, endpoint, caller_for, owner, foreign):
    caller = caller_for(kind, owner, scopes=["admin"])
    method, path, data = FOREIGN_ENDPOINTS[endpoint]
    key = foreign.api_key
    for ident in (key.pk, key.key_id, f" {key.key_id} ", f"{key.pk:03d}"):
        url = path.format(ident=ident)
        args = (url, data) if data is not None else (url,)
        response = getattr(caller, method)(*args)
        error = error_of(response, 404)
        assert error["code"] == "key_not_found"
        assert "their secret project" not in response.content.decode()
    after = ApiKey.objects.get(pk=key.pk)
    assert (after.name, after.scopes) == ("their secret project", ["inference"])
    assert (after.revoked_at, after.expires_at, after.revoked_reason) == (None, None, "")
    assert not ApiKey.objects.filter(rotated_from=key).exists()
    assert list(
        AuditEvent.objects.filter(organization=key.organization).values_list("action", flat=True)
    ) == [AuditAction.KEY_CREATED]
    assert authenticate_key(foreign.raw_key).key_id == key.key_id


@pytest.mark.parametrize("kind", KINDS)
def test_list_never_includes_another_organizations_keys(kind, caller_for, owner, foreign, make_key):
    ours = make_key(owner.organization, name="ours").api_key
    make_key(foreign.api_key.organization, name="theirs too")
    caller = caller_for(kind, owner)
    for status in (None, "active", "revoked", "expired"):
        query = {"status": status} if status else {}
        body = caller.get("/api/keys", **query).json()
        orgs = set(
            ApiKey.objects.filter(key_id__in=[i["key_id"] for i in body["results"]]).values_list(
                "organization", flat=True
            )
        )
        assert orgs <= {owner.organization_id}
    listed = {item["key_id"] for item in caller.get("/api/keys").json()["results"]}
    assert ours.key_id in listed
    assert listed == set(
        ApiKey.objects.filter(organization=owner.organization).values_list("key_id", flat=True)
    )


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_x_organization_of_a_foreign_organization_is_403(kind, caller_for, owner, foreign):
    caller = caller_for(kind, owner)
    slug = foreign.api_key.organization.slug
    header = {"HTTP_X_ORGANIZATION": slug}
    for response in (
        caller.get("/api/keys", headers=header),
        caller.post("/api/keys", {"name": "planted"}, headers=header),
        caller.get(f"/api/keys/{foreign.api_key.key_id}", headers=header),
        caller.post(f"/api/keys/{foreign.api_key.key_id}/revoke", headers=header),
        caller.get("/api/audit", headers=header),
    ):
        assert error_of(response, 403)["code"] == "no_organization"
    assert not ApiKey.objects.filter(name="planted").exists()
    assert ApiKey.objects.get(pk=foreign.api_key.pk).status == ApiKeyStatus.ACTIVE


@pytest.mark.parametrize("kind", ["session", "jwt"])
def test_x_organization_unknown_slug_is_403(kind, caller_for, owner):
    caller = caller_for(kind, owner)
    response = caller.get("/api/keys", headers={"HTTP_X_ORGANIZATION": "no-such-org"})
    assert error_of(response, 403)["code"] == "no_organization"


def test_x_organization_selects_among_the_users_own_organizations_with_that_role(
    caller_for, owner, foreign
):
    other_org = foreign.api_key.organization
    MembershipFactory(user=owner.user, organization=other_org, role=Role.VIEWER)
    caller = caller_for("jwt", owner)
    header = {"HTTP_X_ORGANIZATION": other_org.slug}
    listed = caller.get("/api/keys", headers=header).json()["results"]
    assert [item["key_id"] for item in listed] == [foreign.api_key.key_id]
    response = caller.post(f"/api/keys/{foreign.api_key.key_id}/revoke", headers=header)
    assert error_of(response, 403)["code"] == "insufficient_role"  # a viewer there


def test_api_key_ignores_x_organization_and_acts_for_its_own_organization(
    caller_for, owner, foreign
):
    caller = caller_for("key", owner, scopes=["admin"])
    header = {"HTTP_X_ORGANIZATION": foreign.api_key.organization.slug}
    listed = caller.get("/api/keys", headers=header).json()["results"]
    assert foreign.api_key.key_id not in {item["key_id"] for item in listed}
    created = caller.post("/api/keys", {"name": "where"}, headers=header)
    assert ApiKey.objects.get(key_id=created.json()["key_id"]).organization == owner.organization


# --- audit log -------------------------------------------------------------------------------


@pytest.fixture
def audited(org, owner, foreign, make_key):
    """Key events in `org` (created, revoked) and in the foreign organization (created)."""
    from keys.services import api_key_revoke

    key = make_key(org, actor=actor_for(owner)).api_key
    api_key_revoke(api_key=key, actor=actor_for(owner), reason="test")
    return key


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_audit_log_lists_the_organizations_events_for_owners_and_admins(
    role, team, audited, foreign, caller_for
):
    response = caller_for("session", team[role]).get("/api/audit")
    assert response.status_code == 200
    results = response.json()["results"]
    targets = {(event["action"], event["target_id"]) for event in results}
    assert (AuditAction.KEY_CREATED, audited.key_id) in targets
    assert (AuditAction.KEY_REVOKED, audited.key_id) in targets
    assert foreign.api_key.key_id not in {event["target_id"] for event in results}
    assert AuditEvent.objects.filter(organization=foreign.api_key.organization).exists()
    revoked = next(e for e in results if e["action"] == AuditAction.KEY_REVOKED)
    assert revoked["actor"] == team[Role.OWNER].user.email
    assert revoked["ip"] == "203.0.113.7"
    assert revoked["metadata"]["reason"] == "test"


def test_audit_log_filters_by_action(team, audited, caller_for):
    results = caller_for("jwt", team[Role.OWNER]).get("/api/audit", action="key.revoked")
    assert {e["action"] for e in results.json()["results"]} == {AuditAction.KEY_REVOKED}


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_audit_log_is_403_for_members_and_viewers(role, team, audited, caller_for):
    response = caller_for("session", team[role]).get("/api/audit")
    assert error_of(response, 403)["code"] == "insufficient_role"


def test_audit_log_needs_the_admin_scope_for_a_key(owner, audited, caller_for):
    assert caller_for("key", owner, scopes=["admin"]).get("/api/audit").status_code == 200
    response = caller_for("key", owner, scopes=["keys:write"]).get("/api/audit")
    assert error_of(response, 403)["code"] == "insufficient_scope"


def test_audit_log_needs_authentication(db):
    error_of(Client().get("/api/audit"), 401)


# --- OpenAPI ---------------------------------------------------------------------------------


def test_schema_is_an_openapi_3_document_with_the_key_endpoints(db):
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/keys",
        "/api/keys/{ident}",
        "/api/keys/{ident}/revoke",
        "/api/keys/{ident}/rotate",
        "/api/audit",
        "/api/auth/token",
        "/api/auth/token/refresh",
        "/v1/key",
    ):
        assert path in schema["paths"], path
    assert set(schema["paths"]["/api/keys/{ident}"]) >= {"get", "patch"}


def test_docs_page_answers_with_local_assets_only(db):
    client = Client()
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["']([^"']+)""", html)
    assert sources, html[:500]
    for source in sources:
        assert not re.match(r"(https?:)?//", source), source
        assert client.get(source).status_code == 200, source
    assert not re.search(r"""src=["'](https?:)?//""", html)


@pytest.mark.parametrize("kind", ["jwt", "key"])
def test_a_body_over_djangos_size_cap_is_a_json_413(kind, caller_for, owner, settings):
    """Django refuses to read a body above DATA_UPLOAD_MAX_MEMORY_SIZE; /api says so as /v1
    does, in the error shape, not with Django's HTML "Bad Request" page."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    caller = caller_for(kind, owner)
    before = ApiKey.objects.count()
    response = caller.post("/api/keys", {"name": "x" * 2000})
    error = error_of(response, 413)
    assert error["code"] == "request_too_large"
    assert error["message"] == "The request body is larger than the limit of 1000 bytes."
    assert ApiKey.objects.count() == before
