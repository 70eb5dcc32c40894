"""The audit log's three readers (the page, its CSV export, GET /api/audit) filter alike, through
one form and one selector: the same rows, the same readable labels, the same refusal of a bad
date; and a second organization's events never show, whatever the filter."""

import csv
import io
from datetime import UTC, datetime

import pytest
import time_machine
from django.urls import reverse
from django.utils.html import escape

from accounts.actors import Actor
from accounts.forms import AUDIT_BAD_DATE, AUDIT_RANGE_REVERSED
from accounts.models import AuditAction, Role
from accounts.services import Link, invitation_create, membership_role_change
from keys.services import api_key_create, api_key_revoke
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

MARCH_1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
MARCH_3 = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)


def _actor(membership) -> Actor:
    return Actor(user=membership.user, role=membership.role, ip="192.0.2.9")


@pytest.fixture
def acme():
    """Acme's owner (alice) created a key 'CI deploy' on March 1 and revoked it on March 3,
    after inviting a member and changing their role."""
    owner = MembershipFactory(
        organization__name="Acme", organization__slug="acme", user__email="alice@acme.example"
    )
    member = MembershipFactory(
        organization=owner.organization, user__email="bob@acme.example", role=Role.MEMBER
    )
    with time_machine.travel(MARCH_1, tick=False):
        key = api_key_create(
            organization=owner.organization, actor=_actor(owner), name="CI deploy"
        ).api_key
        invitation_create(
            organization=owner.organization,
            actor=_actor(owner),
            email="carol@acme.example",
            role=Role.VIEWER,
            link=Link(base_url="http://testserver"),
        )
    with time_machine.travel(MARCH_3, tick=False):
        membership_role_change(
            organization=owner.organization,
            actor=_actor(owner),
            membership_id=member.pk,
            role=Role.ADMIN,
        )
        api_key_revoke(api_key=key, actor=_actor(owner), reason="rotated by hand")
    return owner, key


@pytest.fixture
def globex():
    """Another organization whose events look like Acme's: same key name, same dates, and an
    actor whose email contains 'acme'."""
    owner = MembershipFactory(organization__name="Globex", user__email="acme-fan@globex.example")
    for stamp in (MARCH_1, MARCH_3):
        with time_machine.travel(stamp, tick=False):
            key = api_key_create(
                organization=owner.organization, actor=_actor(owner), name="CI deploy"
            ).api_key
    api_key_revoke(api_key=key, actor=_actor(owner), reason="x")
    return owner, key


def _page(client, params) -> list[tuple[str, str, str]]:
    response = client.get(reverse("dashboard:audit"), params)
    assert response.status_code == 200
    return [(event.action, label, target) for event, label, target in response.context["rows"]]


def _csv(client, params) -> list[tuple[str, str, str]]:
    response = client.get(reverse("dashboard:audit_csv"), params)
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    return [(row["action"], row["action_label"], row["target_label"]) for row in rows]


def _api(client, params) -> list[tuple[str, str, str]]:
    response = client.get("/api/audit", params)
    assert response.status_code == 200, response.content
    return [(e["action"], e["action_label"], e["target_label"]) for e in response.json()["results"]]


READERS = {"page": _page, "csv": _csv, "api": _api}


@pytest.mark.parametrize("reader", READERS)
def test_actions_and_targets_read_as_words_everywhere(client, acme, reader):
    owner, key = acme
    client.force_login(owner.user)
    rows = READERS[reader](client, {})
    assert rows == [
        ("login.succeeded", "Login succeeded", "member alice@acme.example"),  # force_login, now
        ("key.revoked", "Key revoked", f"key 'CI deploy' ({key.key_id})"),
        ("member.role_changed", "Member's role changed", "member bob@acme.example"),
        ("member.invited", "Member invited", "invitation carol@acme.example"),
        ("key.created", "Key created", f"key 'CI deploy' ({key.key_id})"),
    ]


FILTERS = [
    {},
    {"action": "key."},
    {"action": "key.created"},
    {"actor": "alice"},
    {"actor": "acme"},  # also part of Globex's actor's email
    {"since": "2026-03-01", "until": "2026-03-01"},
    {"since": "2026-03-02"},
    {"until": "2026-03-31", "action": "key.revoked", "actor": "acme"},
]
ALL = ["key.revoked", "member.role_changed", "member.invited", "key.created"]
LOGIN = "login.succeeded"  # the test's own log-in, now (after March)
EXPECTED = [
    [LOGIN, *ALL],
    ["key.revoked", "key.created"],
    ["key.created"],
    [LOGIN, *ALL],
    [LOGIN, *ALL],
    ["member.invited", "key.created"],
    [LOGIN, "key.revoked", "member.role_changed"],
    ["key.revoked"],
]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("filters", "expected"), list(zip(FILTERS, EXPECTED, strict=True)))
def test_filters_agree_and_another_organizations_rows_never_show(
    client, acme, globex, reader, filters, expected
):
    owner, _ = acme
    _, foreign_key = globex
    client.force_login(owner.user)
    rows = READERS[reader](client, filters)
    assert [action for action, _, _ in rows] == expected
    assert not any(foreign_key.key_id in target for _, _, target in rows)


@pytest.mark.parametrize("reader", READERS)
def test_a_foreign_actor_finds_nothing(client, acme, globex, reader):
    client.force_login(acme[0].user)
    assert READERS[reader](client, {"actor": "globex.example"}) == []


BAD = [
    ({"since": "03/01/2026"}, "since", f"since: {AUDIT_BAD_DATE}"),
    ({"until": "2026-02-30"}, "until", f"until: {AUDIT_BAD_DATE}"),
    ({"since": "yesterday"}, "since", f"since: {AUDIT_BAD_DATE}"),
    ({"since": "2026-03-05", "until": "2026-03-01"}, "until", f"until: {AUDIT_RANGE_REVERSED}"),
]


@pytest.mark.parametrize(("params", "param", "message"), BAD)
def test_a_bad_date_is_a_400_that_says_why_on_the_api(client, acme, params, param, message):
    client.force_login(acme[0].user)
    response = client.get("/api/audit", params)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_request_error",
        "message": message,
        "param": param,
    }


@pytest.mark.parametrize(("params", "param", "message"), BAD)
def test_a_bad_date_is_a_400_on_the_csv_export(client, acme, params, param, message):
    client.force_login(acme[0].user)
    response = client.get(reverse("dashboard:audit_csv"), params)
    assert response.status_code == 400
    assert response.content.decode() == message


@pytest.mark.parametrize(("params", "param", "message"), BAD)
def test_a_bad_date_is_a_form_error_on_the_page_with_no_rows(client, acme, params, param, message):
    client.force_login(acme[0].user)
    response = client.get(reverse("dashboard:audit"), params)
    assert response.status_code == 200
    assert response.context["rows"] == []
    html = response.content.decode()
    assert 'data-testid="audit-filter-errors"' in html
    assert message.split(": ", 1)[1] in html
    assert "Fix the filters above" in html


def test_the_action_filter_is_a_select_of_the_known_actions(client, acme):
    client.force_login(acme[0].user)
    html = client.get(reverse("dashboard:audit"), {"action": "key.revoked"}).content.decode()
    assert '<select id="action" name="action"' in html
    for value, label in AuditAction.choices:
        assert f'<option value="{value}"' in html and f">{escape(label)}</option>" in html, value
    assert '<option value="key.revoked" selected>Key revoked</option>' in html


def test_the_api_schema_documents_the_labels_and_the_date_filters(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/audit"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["since"]["schema"] == {"type": "string", "format": "date"}
    assert parameters["until"]["schema"] == {"type": "string", "format": "date"}
    assert "400" in operation["responses"]
    event = schema["components"]["schemas"]["AuditEventOutput"]
    assert {"action_label", "target_label"} <= set(event["required"])
    assert "Key revoked" in event["properties"]["action_label"]["description"]
