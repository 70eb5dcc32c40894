"""/api/admin/orgs: the operators' tenant lifecycle API, for each kind of caller, and refused to
everybody else on every route."""

import logging

import pytest
from django.test import Client

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Organization, Role
from aibaas.operators.authentication import OPERATORS_ONLY
from aibaas.operators.services import ORGANIZATION_CLOSED, PLAN_MANAGED_BY_STRIPE
from billing.models import BillingAccount, Plan
from keys.models import ApiKey
from keys.services import api_key_create
from metering.quota import QuotaAsk
from metering.quota import counter as quota_counter
from tests.factories import MembershipFactory, UserFactory
from tests.keys.test_apis import csrf_session_client, error_of, jwt_pair

pytestmark = pytest.mark.django_db

TOKEN = "op_" + "t" * 40
BASE = "/api/admin/orgs"


@pytest.fixture(autouse=True)
def _operator_token(settings):
    settings.OPERATOR_API_TOKEN = TOKEN


class Caller:
    def __init__(self, client: Client, headers: dict) -> None:
        self.client, self.headers = client, headers

    def get(self, path: str, **query):
        return self.client.get(path, query, **self.headers)

    def post(self, path: str, data: dict | None = None):
        return self.client.post(path, data or {}, content_type="application/json", **self.headers)

    def patch(self, path: str, data: dict):
        return self.client.patch(path, data, content_type="application/json", **self.headers)


def bearer(value: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {value}"}


@pytest.fixture
def staff():
    return UserFactory(is_staff=True)


def _caller(kind: str, user) -> Caller:
    if kind == "token":
        return Caller(Client(), bearer(TOKEN))
    if kind == "session":
        if not user.is_staff:
            client, csrf = csrf_session_client(user)
            return Caller(client, {"HTTP_X_CSRFTOKEN": csrf})
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        client.get("/admin/")  # sets the CSRF cookie, as any page with a form
        return Caller(client, {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value})
    response = jwt_pair(Client(), user.email)
    assert response.status_code == 200, response.content
    return Caller(Client(), bearer(response.json()["access"]))


def _routes(slug: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", BASE, None),
        ("post", BASE, {"name": "Acme", "owner_email": "ops@acme.test"}),
        ("get", f"{BASE}/{slug}", None),
        ("patch", f"{BASE}/{slug}", {"plan": "pro"}),
        ("post", f"{BASE}/{slug}/reset-usage", {}),
    ]


def _call(caller: Caller, method: str, path: str, data):
    return caller.get(path) if method == "get" else getattr(caller, method)(path, data)


# --- the lifecycle, by each kind of operator --------------------------------------------------


@pytest.mark.parametrize("kind", ["token", "session", "jwt"])
def test_an_operator_creates_updates_lists_and_resets_a_tenant(kind, staff, caplog):
    caller = _caller(kind, staff)
    caplog.set_level(logging.DEBUG)

    created = caller.post(
        BASE,
        {
            "name": "Acme AI",
            "owner_email": "Founder@Acme.test",
            "plan": "starter",
            "monthly_request_quota": 1234,
            "monthly_token_quota": 0,
            "key_scopes": ["inference", "usage:read"],
        },
    )

    assert created.status_code == 201, created.content
    body = created.json()
    slug = body["slug"]
    assert (body["plan"], body["owner_email"]) == ("starter", "founder@acme.test")
    assert (body["custom_monthly_request_quota"], body["monthly_request_quota"]) == (1234, 1234)
    assert (body["custom_monthly_token_quota"], body["monthly_token_quota"]) == (0, 0)
    raw = body["key"]["key"]
    assert raw.startswith("sk_live_") and body["key"]["scopes"] == ["inference", "usage:read"]
    # The raw key is shown once: neither stored nor logged nor in the audit log.
    key = ApiKey.objects.get(key_id=body["key"]["key_id"])
    assert raw not in key.key_hash and raw not in caplog.text
    assert not [e for e in AuditEvent.objects.all() if raw in str(e.metadata)]
    # The key works, held to the custom quotas.
    limits = Client().get("/v1/key", **bearer(raw)).json()["limits"]
    assert (limits["monthly_request_quota"], limits["monthly_token_quota"]) == (1234, 0)

    organization = Organization.objects.get(slug=slug)
    quota_counter.admit(QuotaAsk(organization.pk, request_limit=1234, token_limit=None, tokens=70))
    listed = caller.get(BASE, limit=500).json()
    row = next(r for r in listed["results"] if r["slug"] == slug)
    assert (row["usage"]["requests"], row["usage"]["tokens"]) == (1, 70)

    patched = caller.patch(f"{BASE}/{slug}", {"plan": "pro", "monthly_token_quota": None})
    assert patched.status_code == 200, patched.content
    pro = Plan.objects.get(slug="pro")
    assert (patched.json()["plan"], patched.json()["monthly_token_quota"]) == (
        "pro",
        pro.monthly_token_quota,
    )
    limits = Client().get("/v1/key", **bearer(raw)).json()["limits"]
    assert limits["monthly_token_quota"] == pro.monthly_token_quota  # on the next request

    reset = caller.post(f"{BASE}/{slug}/reset-usage", {"reason": "goodwill"})
    assert reset.status_code == 200, reset.content
    assert (reset.json()["usage"]["requests"], reset.json()["usage"]["tokens"]) == (0, 0)
    assert caller.get(f"{BASE}/{slug}").json()["usage"]["requests"] == 0

    actions = list(
        AuditEvent.objects.filter(organization=organization)
        .order_by("created_at", "id")
        .values_list("action", "actor_label")
    )
    who = "operator-token" if kind == "token" else staff.email
    assert actions == [
        (AuditAction.ORGANIZATION_CREATED, who),
        (AuditAction.QUOTA_CHANGED, who),
        (AuditAction.KEY_CREATED, who),
        (AuditAction.PLAN_CHANGED, who),
        (AuditAction.QUOTA_CHANGED, who),
        (AuditAction.QUOTA_RESET, who),
    ]


def test_the_list_is_paginated_and_filtered_by_plan():
    for _ in range(3):
        MembershipFactory(organization__plan=Plan.objects.get(slug="pro"))
    MembershipFactory()
    caller = Caller(Client(), bearer(TOKEN))

    page = caller.get(BASE, limit=2, plan="pro").json()

    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert {row["plan"] for row in page["results"]} == {"pro"}
    assert caller.get(BASE, plan="free").json()["count"] == 1


def test_a_closed_organization_is_listed_and_cannot_change():
    owner = MembershipFactory()
    Organization.objects.filter(pk=owner.organization.pk).update(deleted_at="2026-01-01T00:00Z")
    caller = Caller(Client(), bearer(TOKEN))
    slug = owner.organization.slug

    assert caller.get(f"{BASE}/{slug}").json()["closed_at"].startswith("2026-01-01")
    assert error_of(caller.patch(f"{BASE}/{slug}", {"plan": "pro"}), 409)["code"] == (
        ORGANIZATION_CLOSED
    )
    assert error_of(caller.post(f"{BASE}/{slug}/reset-usage"), 409)["code"] == ORGANIZATION_CLOSED


def test_the_plan_of_an_organization_stripe_bills_is_stripes():
    owner = MembershipFactory()
    BillingAccount.objects.create(
        organization=owner.organization,
        stripe_customer_id="cus_1",
        stripe_subscription_id="sub_1",
        subscription_status="active",
    )
    caller = Caller(Client(), bearer(TOKEN))
    path = f"{BASE}/{owner.organization.slug}"

    assert error_of(caller.patch(path, {"plan": "pro"}), 409)["code"] == PLAN_MANAGED_BY_STRIPE
    assert caller.patch(path, {"monthly_request_quota": 5}).status_code == 200  # quotas are ours
    owner.organization.refresh_from_db()
    assert (owner.organization.plan.slug, owner.organization.monthly_request_quota) == ("free", 5)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"owner_email": "a@b.test"}, "name"),
        ({"name": "X"}, "owner_email"),
        ({"name": "X", "owner_email": "not-an-email"}, "owner_email"),
        ({"name": "X", "owner_email": "a@b.test", "plan": "platinum"}, "plan"),
        (
            {"name": "X", "owner_email": "a@b.test", "monthly_request_quota": -1},
            "monthly_request_quota",
        ),
        (
            {"name": "X", "owner_email": "a@b.test", "monthly_token_quota": "many"},
            "monthly_token_quota",
        ),
        ({"name": "X", "owner_email": "a@b.test", "key_scopes": ["root"]}, "key_scopes"),
        ({"name": "X", "owner_email": "a@b.test", "key_scopes": []}, "key_scopes"),
        ({"name": "X", "owner_email": "a@b.test", "slug": "taken"}, "slug"),
        ({"name": " ", "owner_email": "a@b.test"}, "name"),
    ],
)
def test_a_bad_creation_is_400_naming_the_field_and_creates_nothing(data, param):
    MembershipFactory(organization__slug="taken")
    before = (Organization.objects.count(), ApiKey.objects.count(), AuditEvent.objects.count())

    error = error_of(Caller(Client(), bearer(TOKEN)).post(BASE, data), 400)

    assert (error["code"], error["param"]) == ("invalid_request_error", param)
    after = (Organization.objects.count(), ApiKey.objects.count(), AuditEvent.objects.count())
    assert after == before


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"plan": "platinum"}, "plan"),
        ({"monthly_request_quota": -5}, "monthly_request_quota"),
        ({"monthly_token_quota": 10**16}, "monthly_token_quota"),
    ],
)
def test_a_bad_update_is_400_and_changes_nothing(data, param):
    owner = MembershipFactory()

    error = error_of(
        Caller(Client(), bearer(TOKEN)).patch(f"{BASE}/{owner.organization.slug}", data), 400
    )

    assert error["param"] == param
    owner.organization.refresh_from_db()
    assert owner.organization.plan.slug == "free"
    assert owner.organization.monthly_request_quota is None
    assert not AuditEvent.objects.filter(action__in=["plan.changed", "quota.changed"]).exists()


@pytest.mark.parametrize("method", ["get", "patch", "post"])
def test_an_unknown_organization_is_404(method):
    caller = Caller(Client(), bearer(TOKEN))
    path = f"{BASE}/nope" + ("/reset-usage" if method == "post" else "")
    assert error_of(_call(caller, method, path, {}), 404)["code"] == "organization_not_found"


# --- everybody else: refused on every route, nothing changed -----------------------------------


@pytest.fixture
def tenant():
    return MembershipFactory(organization__plan=Plan.objects.get(slug="starter"))


def _refused_callers(tenant, settings) -> dict:
    admin_key = api_key_create(
        organization=tenant.organization,
        name="all scopes",
        actor=Actor.for_system("tests"),
        scopes=["admin", "inference", "keys:write", "usage:read"],
    ).raw_key
    return {
        "nobody": (Caller(Client(), {}), 401),
        "wrong token": (Caller(Client(), bearer("op_" + "x" * 40)), 401),
        "token with a suffix": (Caller(Client(), bearer(TOKEN + "x")), 401),
        "tenant key, admin scope": (Caller(Client(), bearer(admin_key)), 403),
        "tenant key in X-API-Key": (Caller(Client(), {"HTTP_X_API_KEY": admin_key}), 403),
        "owner, session": (_caller("session", tenant.user), 403),
        "owner, JWT": (_caller("jwt", tenant.user), 403),
    }


@pytest.mark.parametrize(
    "who",
    [
        "nobody",
        "wrong token",
        "token with a suffix",
        "tenant key, admin scope",
        "tenant key in X-API-Key",
        "owner, session",
        "owner, JWT",
    ],
)
def test_everybody_else_is_refused_on_every_route(who, tenant, settings):
    caller, status = _refused_callers(tenant, settings)[who]
    before = Organization.objects.count()

    for method, path, data in _routes(tenant.organization.slug):
        error = error_of(_call(caller, method, path, data), status)
        if status == 403:
            assert error["code"] == OPERATORS_ONLY, (method, path)
        else:
            assert _call(caller, method, path, data)["WWW-Authenticate"]

    assert Organization.objects.count() == before
    tenant.organization.refresh_from_db()
    assert tenant.organization.plan.slug == "starter"
    assert not AuditEvent.objects.filter(action__in=["plan.changed", "quota.reset"]).exists()


def test_without_operator_api_token_the_token_path_is_off(settings, staff):
    settings.OPERATOR_API_TOKEN = ""
    assert error_of(Caller(Client(), bearer(TOKEN)).get(BASE), 401)
    assert _caller("jwt", staff).get(BASE).status_code == 200  # staff still may


def test_an_inactive_staff_user_is_refused(staff):
    caller = _caller("jwt", staff)
    staff.is_active = False
    staff.save()
    assert caller.get(BASE).status_code == 401


def test_a_staff_member_of_an_organization_acts_as_operator_not_as_member():
    membership = MembershipFactory(role=Role.VIEWER, user__is_staff=True)
    assert _caller("session", membership.user).get(BASE).status_code == 200


def test_a_staff_session_write_without_the_csrf_token_is_refused(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(
        BASE, {"name": "X", "owner_email": "a@b.test"}, content_type="application/json"
    )
    assert error_of(response, 403)
    assert not Organization.objects.filter(name="X").exists()
