"""The audit log as people read it: labelled actions, named targets (never `user 2`), filters
by actor, action and date, and a streamed CSV export that a spreadsheet cannot execute."""

import csv
import io
from datetime import UTC, datetime

import pytest
import time_machine
from django.urls import reverse

from accounts.actors import Actor
from accounts.audit import action_label, audit_csv_lines, audit_list, audit_record, target_text
from accounts.models import AuditAction, AuditEvent, Role
from accounts.services import organization_rename
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return MembershipFactory(
        organization__name="Acme", organization__slug="acme", user__email="owner@acme.example"
    )


def owner_actor(owner) -> Actor:
    return Actor(user=owner.user, role=Role.OWNER, ip="192.0.2.1")


@pytest.mark.parametrize(
    ("action", "label"),
    [
        (AuditAction.MEMBER_ROLE_CHANGED, "Member's role changed"),
        (AuditAction.KEY_REVOKED, "Key revoked"),
        ("plan.changed", "Plan changed"),
        ("billing.checkout_started", "Checkout started"),
        ("something.brand_new", "Something: brand new"),
    ],
)
def test_every_action_reads_as_words(action, label):
    assert action_label(action) == label


def test_a_user_target_is_named_by_email_not_by_id(owner, client):
    client.force_login(owner.user)
    AuditEvent.objects.all().delete()
    audit_record(
        action=AuditAction.LOGIN_SUCCEEDED,
        actor=owner_actor(owner),
        organization=owner.organization,
        target_type="user",
        target_id=str(owner.user_id),
    )
    event = AuditEvent.objects.get()
    assert event.target_label == "owner@acme.example"
    assert target_text(event) == "member owner@acme.example"
    page = client.get(reverse("dashboard:audit")).content.decode()
    assert "member owner@acme.example" in page
    assert f"user {owner.user_id}" not in page


def test_a_key_target_is_named_by_its_name_and_id(owner):
    audit_record(
        action=AuditAction.KEY_CREATED,
        actor=owner_actor(owner),
        organization=owner.organization,
        target_type="api_key",
        target_id="AbCdEfGh1234",
        metadata={"name": "production"},
    )
    assert target_text(AuditEvent.objects.get()) == "key 'production' (AbCdEfGh1234)"


def test_signup_and_organization_creation_are_audited(client):
    from tests.factories import PASSWORD

    client.post(
        reverse("accounts:signup"),
        {"email": "ada@example.com", "password": PASSWORD, "organization_name": "Engines"},
        REMOTE_ADDR="198.51.100.4",
    )
    events = {e.action: e for e in AuditEvent.objects.filter(organization__name="Engines")}
    assert events[AuditAction.USER_SIGNED_UP].target_label == "ada@example.com"
    assert events[AuditAction.USER_SIGNED_UP].ip == "198.51.100.4"
    assert events[AuditAction.ORGANIZATION_CREATED].target_label == "Engines"
    assert events[AuditAction.ORGANIZATION_CREATED].actor_label == "ada@example.com"


def test_an_operators_plan_change_is_audited(owner):
    from django.core.management import call_command

    call_command("set_plan", org="acme", plan="pro", stdout=io.StringIO())
    event = AuditEvent.objects.get(action=AuditAction.PLAN_CHANGED)
    assert event.actor_label == "manage.py set_plan"
    assert event.metadata == {"from": "free", "to": "pro"}
    assert event.target_label == "Acme"


def _events_at(owner, *stamps_and_actions):
    for stamp, action, label in stamps_and_actions:
        with time_machine.travel(stamp, tick=False):
            audit_record(
                action=action,
                actor=Actor(user=None, system=label),
                organization=owner.organization,
            )


def test_filters_by_actor_action_and_date_range(owner, client):
    _events_at(
        owner,
        (datetime(2026, 3, 1, 23, 59, tzinfo=UTC), AuditAction.KEY_CREATED, "alice@x.example"),
        (datetime(2026, 3, 2, 0, 0, tzinfo=UTC), AuditAction.KEY_REVOKED, "bob@x.example"),
        (datetime(2026, 3, 3, 12, 0, tzinfo=UTC), AuditAction.KEY_CREATED, "bob@x.example"),
        (datetime(2026, 3, 4, 0, 0, tzinfo=UTC), AuditAction.MEMBER_REMOVED, "alice@x.example"),
    )
    org = owner.organization

    def labels(**filters):
        return [(e.action, e.actor_label) for e in audit_list(organization=org, **filters)]

    assert labels(actor="bob") == [
        ("key.created", "bob@x.example"),
        ("key.revoked", "bob@x.example"),
    ]
    assert labels(action="key.created") == [
        ("key.created", "bob@x.example"),
        ("key.created", "alice@x.example"),
    ]
    since, until = datetime(2026, 3, 2).date(), datetime(2026, 3, 3).date()
    assert labels(since=since, until=until) == [
        ("key.created", "bob@x.example"),
        ("key.revoked", "bob@x.example"),
    ]
    client.force_login(owner.user)
    page = client.get(
        reverse("dashboard:audit"), {"actor": "alice", "since": "2026-03-02", "until": "2026-03-31"}
    )
    rows = [r for r in page.context["rows"]]
    assert [(e.action, label) for e, label, _ in rows] == [("member.removed", "Member removed")]
    # The CSV link carries the same filters.
    assert "actor=alice" in page.context["query"]
    bad = client.get(reverse("dashboard:audit"), {"since": "2026-03-05", "until": "2026-03-01"})
    assert "The end date is before the start date." in bad.content.decode()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_only_owners_and_admins_read_or_export(owner, client, role):
    member = MembershipFactory(organization=owner.organization, role=role)
    client.force_login(member.user)
    assert client.get(reverse("dashboard:audit")).status_code == 302
    assert client.get(reverse("dashboard:audit_csv")).status_code == 302


def test_csv_export_is_streamed_named_and_formula_safe(owner, client):
    organization_rename(
        organization=owner.organization, actor=owner_actor(owner), name='=HYPERLINK("http://evil")'
    )
    audit_record(
        action=AuditAction.KEY_CREATED,
        actor=Actor(system="+cmd|' /C calc'!A0"),
        organization=owner.organization,
        target_type="api_key",
        target_id="AbCdEfGh1234",
        metadata={"name": "@SUM(1+1)", "note": "-2+3"},
    )
    other = MembershipFactory(organization__name="Other")
    audit_record(
        action=AuditAction.KEY_CREATED, actor=Actor(system="x"), organization=other.organization
    )
    client.force_login(owner.user)

    response = client.get(reverse("dashboard:audit_csv"), {"action": "key."})

    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-acme-')
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["time_utc", "action", "action_label", "actor"]
    assert len(rows) == 2  # the filter applies; the other organization's event is not there
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["action_label"] == "Key created"
    assert row["actor"] == "'+cmd|' /C calc'!A0"
    assert row["target_label"] == "key '@SUM(1+1)' (AbCdEfGh1234)"  # starts with a word: safe
    assert row["details"].startswith("name=@SUM")  # not at the start of the cell: harmless
    everything = list(
        csv.reader(
            io.StringIO(
                b"".join(client.get(reverse("dashboard:audit_csv")).streaming_content).decode()
            )
        )
    )
    renamed = next(r for r in everything if r[1] == "organization.renamed")
    assert renamed[5] == 'organization =HYPERLINK("http://evil")'


def test_csv_lines_are_one_per_event():
    assert next(iter(audit_csv_lines([]))).startswith("time_utc,action")


def _form_data(response) -> dict:
    """The admin change form's current values, as the browser would post them."""
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None:
            continue
        if isinstance(value, list | tuple):
            data[name] = [str(v) for v in value]
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = field.prepare_value(value) if hasattr(field, "prepare_value") else value
    for formset in response.context.get("inline_admin_formsets", []):
        management = formset.formset.management_form
        for name in management.fields:
            data[f"{management.prefix}-{name}"] = management[name].value()
    return data


def test_an_operators_price_edit_in_the_admin_is_audited(client):
    from tests.factories import ModelPriceFactory, UserFactory

    price = ModelPriceFactory(model__name="llama-3-8b")
    operator = UserFactory(email="root@ops.example", is_staff=True, is_superuser=True)
    client.force_login(operator)
    url = reverse("admin:billing_modelprice_change", args=[price.pk])
    data = _form_data(client.get(url))
    data["input_per_million"] = "3.50"
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    event = AuditEvent.objects.get(action=AuditAction.CATALOGUE_CHANGED)
    assert event.actor_label == "root@ops.example"
    assert event.target_type == "modelprice" and event.target_id == str(price.pk)
    assert "llama-3-8b" in event.target_label
    assert event.metadata == {
        "what": "model price",
        "change": "changed",
        "fields": "Changed Input per million.",
    }
    assert action_label(event.action) == "Model or price changed by an operator"


def test_an_operators_bulk_delete_in_the_admin_audits_each_object(client):
    """ "Delete selected" logs with one bulk insert, which no signal hears: each object still gets
    its catalogue.changed event."""
    from billing.models import ModelPrice
    from tests.factories import ModelPriceFactory, UserFactory

    prices = [ModelPriceFactory(model__name=name) for name in ("old-a", "old-b")]
    client.force_login(UserFactory(email="root@ops.example", is_staff=True, is_superuser=True))
    response = client.post(
        reverse("admin:billing_modelprice_changelist"),
        {"action": "delete_selected", "_selected_action": [p.pk for p in prices], "post": "yes"},
    )
    assert response.status_code == 302
    assert not ModelPrice.objects.filter(pk__in=[p.pk for p in prices]).exists()
    events = AuditEvent.objects.filter(action=AuditAction.CATALOGUE_CHANGED).order_by("target_id")
    assert [(e.target_id, e.metadata["change"], e.actor_label) for e in events] == [
        (str(p.pk), "deleted", "root@ops.example") for p in sorted(prices, key=lambda p: str(p.pk))
    ]
    assert all(name in " ".join(e.target_label for e in events) for name in ("old-a", "old-b"))
