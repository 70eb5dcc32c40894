"""usage_record (idempotent writes), the event codec, and emit without a stream: the embedded
defaults, REDIS_URL without a broker, and Redis down at emit time."""

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering.models import UsageEvent
from metering.services import usage_record
from metering.usage import emit as usage_emit_module
from metering.usage.events import UsageEventData
from tests.metering.conftest import emit, make_event
from tests.servers import free_port

pytestmark = pytest.mark.django_db


# --- usage_record ---------------------------------------------------------------------------


def test_same_request_id_twice_is_one_row(issued):
    event = make_event(issued)
    assert usage_record(events=[event]) == 1
    assert usage_record(events=[event]) == 1
    assert UsageEvent.objects.filter(request_id=event.request_id).count() == 1


def test_a_replayed_batch_adds_only_the_new_events(issued):
    first = [make_event(issued) for _ in range(3)]
    usage_record(events=first)
    usage_record(events=[*first, make_event(issued, request_id="req_new")])
    assert UsageEvent.objects.count() == 4


def test_a_replay_never_overwrites_the_stored_event(issued):
    event = make_event(issued, output_tokens=5)
    usage_record(events=[event])
    usage_record(events=[make_event(issued, request_id=event.request_id, output_tokens=999)])
    assert UsageEvent.objects.get().output_tokens == 5


def test_empty_batch_writes_nothing(db, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert usage_record(events=[]) == 0


def test_event_of_a_deleted_key_is_stored_with_its_key_id(issued):
    event = make_event(issued)
    issued.api_key.delete()
    usage_record(events=[event])
    row = UsageEvent.objects.get()
    assert (row.api_key_id, row.key_id) == (None, event.key_id)


def test_event_of_a_deleted_organization_is_dropped_and_logged(issued, make_key, other_org, caplog):
    gone, kept = make_event(issued), make_event(make_key(other_org))
    issued.api_key.organization.delete()
    assert usage_record(events=[gone, kept]) == 1
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [kept.request_id]
    assert f"usage event {gone.request_id} dropped" in caplog.text


# --- the event codec ------------------------------------------------------------------------


def test_event_round_trips_through_json(issued):
    event = make_event(issued, estimated=True, cached=True, client_ip=None)
    assert UsageEventData.from_json(event.to_json()) == event
    assert UsageEventData.from_json(event.to_json().encode()) == event


def test_cost_given_as_float_or_str_becomes_an_exact_decimal(issued):
    assert make_event(issued, cost=0.1).cost == Decimal("0.1")
    assert make_event(issued, cost="0.00001234").cost == Decimal("0.00001234")


def test_naive_created_at_is_utc(issued):
    event = make_event(issued, created_at=datetime(2025, 1, 1))
    assert event.created_at == datetime(2025, 1, 1, tzinfo=UTC)


LONG = "m" * 10_000


@pytest.mark.parametrize(
    ("fields", "stored"),
    [
        ({"input_tokens": -1}, {"input_tokens": 0}),
        ({"output_tokens": 10**30}, {"output_tokens": 2**31 - 1}),
        ({"input_tokens": float("inf")}, {"input_tokens": 0}),
        ({"cost": Decimal("-0.00000001")}, {"cost": Decimal(0)}),
        ({"cost": Decimal("1e40")}, {"cost": Decimal("9999999999")}),
        ({"cost": Decimal("NaN")}, {"cost": Decimal(0)}),
        ({"cost": "0.123456789"}, {"cost": Decimal("0.12345679")}),
        ({"latency_ms": -1}, {"latency_ms": 0}),
        ({"upstream_latency_ms": 10**12}, {"upstream_latency_ms": 2**31 - 1}),
        ({"status_code": 10**6}, {"status_code": 2**15 - 1}),
        ({"model": ""}, {"model": "unknown"}),
        ({"model": "demo-chat\x00"}, {"model": "demo-chat\ufffd"}),
        ({"model": "a\ud800b\udfff"}, {"model": "a\ufffdb\ufffd"}),
        ({"model": LONG}, {"model": "m" * 200}),
        ({"model": "\x00" * 500}, {"model": "\ufffd" * 200}),
        ({"error_code": "x\x00" * 40}, {"error_code": ("x\ufffd" * 25)}),
        ({"key_id": "k" * 99}, {"key_id": "k" * 32}),
        ({"request_id": "r\x00" + "r" * 200}, {"request_id": "r\ufffd" + "r" * 98}),
        ({"client_ip": "not-an-address"}, {"client_ip": None}),
        ({"client_ip": 7}, {"client_ip": None}),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)
def test_hostile_values_become_storable_values(issued, fields, stored):
    event = make_event(issued, **fields)
    for name, value in stored.items():
        assert getattr(event, name) == value
    usage_record(events=[event])
    row = UsageEvent.objects.get()
    for name, value in stored.items():
        if isinstance(value, Decimal):  # SQLite keeps a decimal as a double
            value = pytest.approx(value, rel=Decimal("1e-15"))
        assert getattr(row, name) == value
    assert UsageEventData.from_json(event.to_json()) == event


def test_event_without_request_id_is_refused(issued):
    with pytest.raises(ValueError, match="request_id"):
        make_event(issued, request_id="\x00"[:0])


def test_legacy_stream_entry_without_billable_is_classified_by_its_status(issued):
    for status, tokens, billable in [(200, 5, True), (404, 0, False), (429, 0, False)]:
        data = json.loads(make_event(issued, status_code=status, input_tokens=tokens).to_json())
        del data["billable"], data["error_code"]
        assert UsageEventData.from_json(json.dumps(data)).billable is billable


def test_event_is_immutable(issued):
    event = make_event(issued)
    with pytest.raises(AttributeError):
        event.cost = Decimal(1)


# --- emit without a stream ------------------------------------------------------------------


def test_emit_on_embedded_defaults_writes_synchronously(database_mode, issued):
    event = make_event(issued, created_at=datetime(2025, 3, 1, 12, tzinfo=UTC))
    emit(event)
    row = UsageEvent.objects.get()
    assert (row.request_id, row.created_at) == (event.request_id, event.created_at)


def test_a_locked_database_is_waited_out_not_a_lost_event(database_mode, issued):
    """SQLite refuses a write while another thread holds its lock: the event is written once
    the lock is gone, not dropped."""
    from django.db import OperationalError, connection

    refusals = []

    def locked_twice(execute, sql, params, many, context):
        if sql.startswith("INSERT") and len(refusals) < 2:
            refusals.append(sql)
            raise OperationalError("database table is locked")
        return execute(sql, params, many, context)

    event = make_event(issued)
    with connection.execute_wrapper(locked_twice):
        emit(event)
    assert len(refusals) == 2
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [event.request_id]


def test_emit_with_redis_but_no_broker_writes_synchronously(settings, issued):
    # Nothing would drain a stream without a Celery worker: the documented choice.
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # never contacted
    settings.CELERY_BROKER_URL = ""
    emit(make_event(issued))
    assert UsageEvent.objects.count() == 1


@pytest.fixture
def redis_down(settings):
    """Production's emit mode, with Redis refusing connections."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    return settings


def test_redis_down_at_emit_falls_back_to_a_synchronous_write(redis_down, issued, caplog):
    event = make_event(issued)
    with caplog.at_level(logging.WARNING, logger="metering.usage.emit"):
        emit(event)
    assert UsageEvent.objects.get().request_id == event.request_id
    assert "Redis unreachable" in caplog.text
    assert f"usage event {event.request_id} written to the database directly" in caplog.text


def test_after_a_failure_redis_is_skipped_for_a_while(redis_down, issued, caplog, monkeypatch):
    emit(make_event(issued))
    attempts = []
    monkeypatch.setattr(usage_emit_module, "apipelined", lambda *a, **k: attempts.append(1))
    for _ in range(5):
        emit(make_event(issued))
    assert attempts == []  # straight to the database, no socket timeout per request
    assert UsageEvent.objects.count() == 6
    assert caplog.text.count("Redis unreachable") == 1


def test_when_the_database_fails_too_the_event_is_logged_for_replay(
    database_mode, issued, caplog, monkeypatch
):
    event = make_event(issued)

    def broken(**kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr("metering.usage.emit.usage_record", broken)
    with pytest.raises(RuntimeError):
        emit(event)
    assert "usage event NOT RECORDED" in caplog.text
    assert event.to_json() in caplog.text
