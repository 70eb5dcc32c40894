"""metering.UsageEvent: its constraints, what deleting a key or an organization does, the admin."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.urls import reverse

from metering.models import UsageEvent
from metering.services import usage_record
from tests.metering.conftest import make_event

pytestmark = pytest.mark.django_db


def stored(issued, **fields) -> UsageEvent:
    event = make_event(issued, **fields)
    usage_record(events=[event])
    return UsageEvent.objects.get(request_id=event.request_id)


def test_a_stored_event_keeps_every_field(issued):
    event = make_event(issued, estimated=True, cached=True, upstream_latency_ms=None)
    usage_record(events=[event])
    row = UsageEvent.objects.get()
    assert row.request_id == event.request_id
    assert (row.organization_id, row.api_key_id, row.key_id) == (
        issued.api_key.organization_id,
        issued.api_key.pk,
        issued.api_key.key_id,
    )
    assert (row.model, row.endpoint, row.status_code) == ("demo-chat", "chat.completions", 200)
    assert (row.input_tokens, row.output_tokens) == (10, 20)
    assert (row.estimated, row.cached) == (True, True)
    assert row.cost == Decimal("0.00001234")
    assert (row.latency_ms, row.upstream_latency_ms) == (12, None)
    assert row.client_ip == "203.0.113.9"
    assert row.created_at == event.created_at


def test_request_id_is_unique(issued):
    row = stored(issued)
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageEvent.objects.create(
            request_id=row.request_id,
            organization_id=row.organization_id,
            key_id=row.key_id,
            model="m",
            endpoint="embeddings",
            status_code=200,
        )


def test_cost_cannot_be_negative(issued):
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageEvent.objects.create(
            request_id="req_negative",
            organization=issued.api_key.organization,
            key_id="k",
            model="m",
            endpoint="embeddings",
            status_code=200,
            cost=Decimal("-0.00000001"),
        )


def test_cost_keeps_eight_decimal_places(issued):
    # 14 significant digits: exact on SQLite too, which keeps decimals as 15-digit REALs.
    row = stored(issued, cost=Decimal("123456.12345678"))
    row.refresh_from_db()
    assert row.cost == Decimal("123456.12345678")


@pytest.mark.postgres
def test_cost_is_exact_to_the_full_eighteen_digits_on_postgresql(issued):
    row = stored(issued, cost=Decimal("1234567890.12345678"))
    row.refresh_from_db()
    assert row.cost == Decimal("1234567890.12345678")


def test_deleting_the_key_keeps_its_events_and_key_id(issued):
    row = stored(issued)
    issued.api_key.delete()
    row.refresh_from_db()
    assert row.api_key_id is None
    assert row.key_id == issued.api_key.key_id


def test_an_organization_with_events_cannot_be_deleted(issued):
    """Usage events are billing records: any delete of their organization that skips
    accounts.services.organization_delete (shell, ORM, a cascade) is refused, events kept."""
    event = stored(issued)
    with pytest.raises(ProtectedError):
        issued.api_key.organization.delete()
    assert UsageEvent.objects.filter(request_id=event.request_id).exists()


# --- admin: read-only ---------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser(email="ops@example.com", password="!")
    client.force_login(user)
    return client


def test_admin_lists_and_searches_events(admin_client, issued):
    row = stored(issued)
    url = reverse("admin:metering_usageevent_changelist")
    response = admin_client.get(url, {"q": row.request_id})
    assert response.status_code == 200
    assert row.request_id in response.content.decode()
    for params in (
        {"cached__exact": "1"},
        {"status_code": "200"},
        {"model": "demo-chat"},
        {"billable__exact": "0"},
        {"error_code": "model_not_found"},
    ):
        assert admin_client.get(url, params).status_code == 200
    assert admin_client.get(url, {"q": issued.api_key.key_id}).status_code == 200


def test_admin_cannot_add_change_or_delete(admin_client, issued):
    row = stored(issued)
    assert admin_client.get(reverse("admin:metering_usageevent_add")).status_code == 403
    change = reverse("admin:metering_usageevent_change", args=[row.pk])
    assert admin_client.get(change).status_code == 200  # the read-only view
    assert admin_client.post(change, {"model": "tampered"}).status_code == 403
    delete = reverse("admin:metering_usageevent_delete", args=[row.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert row.model == "demo-chat"
