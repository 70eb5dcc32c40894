"""The production path on a real Redis: emit → XADD → drain → rows, replays, reclaims, the
dead-letter stream, the Celery task."""

import json

import pytest
from asgiref.sync import async_to_sync

from metering.models import UsageEvent
from metering.services import GROUP, usage_drain
from metering.tasks import drain_usage_events
from metering.usage import ausage_emit
from metering.usage.events import ENTRY_FIELD, dead_letter_key
from tests.metering.conftest import emit, make_event

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


def request_ids() -> list[str]:
    return sorted(UsageEvent.objects.values_list("request_id", flat=True))


def pending(stream, key: str) -> int:
    return stream.xpending(key, GROUP)["pending"]


def test_emit_adds_to_the_stream_and_the_drain_writes_it(stream_mode, stream, issued):
    event = make_event(issued)
    emit(event)
    key = stream_mode.USAGE_STREAM_KEY
    assert UsageEvent.objects.count() == 0  # off the request path
    [(_, fields)] = stream.xrange(key)
    assert json.loads(fields[ENTRY_FIELD.encode()])["request_id"] == event.request_id
    assert usage_drain() == 1
    assert request_ids() == [event.request_id]
    assert stream.xlen(key) == 0  # acked and deleted
    assert pending(stream, key) == 0


def test_async_emit_adds_to_the_stream(stream_mode, stream, issued):
    events = [make_event(issued) for _ in range(3)]

    async def emit_all():
        for event in events:
            await ausage_emit(event)

    async_to_sync(emit_all)()
    assert stream.xlen(stream_mode.USAGE_STREAM_KEY) == 3
    assert usage_drain() == 3
    assert request_ids() == sorted(e.request_id for e in events)


def test_the_stream_is_never_trimmed_of_undrained_events(stream_mode, stream, issued):
    # A MAXLEN cap would delete the oldest undrained events (billing data) once the drain fell
    # behind: every entry stays until it is stored.
    events = [make_event(issued) for _ in range(300)]
    for event in events[:150]:
        emit(event)

    async def emit_rest():
        for event in events[150:]:
            await ausage_emit(event)

    async_to_sync(emit_rest)()
    assert stream.xlen(stream_mode.USAGE_STREAM_KEY) == 300
    assert usage_drain() == 300


def test_drain_works_in_batches_until_the_stream_is_empty(stream_mode, stream, issued):
    events = [make_event(issued) for _ in range(1203)]
    for event in events:
        emit(event)
    assert usage_drain(batch_size=500) == 1203
    assert UsageEvent.objects.count() == 1203
    assert stream.xlen(stream_mode.USAGE_STREAM_KEY) == 0


def test_drain_stops_after_max_batches_and_the_next_run_continues(stream_mode, stream, issued):
    for _ in range(25):
        emit(make_event(issued))
    assert usage_drain(batch_size=10, max_batches=2) == 20
    assert usage_drain(batch_size=10, max_batches=2) == 5
    assert UsageEvent.objects.count() == 25


def test_drain_of_an_empty_or_missing_stream_does_nothing(stream_mode, stream):
    assert usage_drain() == 0
    assert usage_drain() == 0


def test_replayed_entries_are_stored_once(stream_mode, stream, issued):
    event = make_event(issued)
    key = stream_mode.USAGE_STREAM_KEY
    emit(event)
    emit(event)  # an XADD retried after a lost reply
    usage_drain()
    stream.xadd(key, {ENTRY_FIELD: event.to_json()})  # and once more, after the drain
    usage_drain()
    assert request_ids() == [event.request_id]
    assert stream.xlen(key) == 0


def test_entries_left_pending_by_a_crashed_drainer_are_reclaimed(stream_mode, stream, issued):
    events = [make_event(issued) for _ in range(3)]
    for event in events:
        emit(event)
    key = stream_mode.USAGE_STREAM_KEY
    usage_drain()  # creates the group; everything is stored
    late = [make_event(issued) for _ in range(4)]
    for event in late:
        emit(event)
    # A drainer reads a batch and dies before writing or acking it.
    read = stream.xreadgroup(GROUP, "crashed-drainer", {key: ">"}, count=10)
    assert len(read[0][1]) == 4
    assert pending(stream, key) == 4
    # A live drainer does not take entries another one may still be working on...
    assert usage_drain() == 0
    assert pending(stream, key) == 4
    # ...but takes them once they have been idle past the reclaim time.
    assert usage_drain(reclaim_idle_ms=0) == 4
    assert request_ids() == sorted(e.request_id for e in [*events, *late])
    assert pending(stream, key) == 0
    assert stream.xlen(key) == 0


def test_batch_written_but_not_acked_is_reclaimed_without_double_counting(
    stream_mode, stream, issued
):
    from metering.services import usage_record

    events = [make_event(issued) for _ in range(5)]
    for event in events:
        emit(event)
    key = stream_mode.USAGE_STREAM_KEY
    usage_drain()
    for event in events:
        emit(event)  # the same events again, read by a drainer that dies after its commit
    read = stream.xreadgroup(GROUP, "crashed-drainer", {key: ">"}, count=10)
    usage_record(events=[make_event(issued, request_id=e.request_id) for e in events[:2]])
    assert len(read[0][1]) == 5
    assert usage_drain(reclaim_idle_ms=0) == 5
    assert request_ids() == sorted(e.request_id for e in events)


def test_undecodable_entry_goes_to_the_dead_letter_stream(stream_mode, stream, issued, caplog):
    key = stream_mode.USAGE_STREAM_KEY
    good = make_event(issued)
    emit(good)
    stream.xadd(key, {ENTRY_FIELD: "{not json"})
    stream.xadd(key, {"other": "field"})
    for bad in ({"request_id": ""}, {"cost": "abc"}, {"unknown": 1}):
        fields = json.loads(good.to_json()) | {"request_id": "req_bad"} | bad
        stream.xadd(key, {ENTRY_FIELD: json.dumps(fields)})
    stream.xadd(key, {ENTRY_FIELD: "null"})
    assert usage_drain() == 1
    assert request_ids() == [good.request_id]
    dead = stream.xrange(dead_letter_key(key))
    assert [fields[b"reason"].startswith(b"undecodable") for _, fields in dead] == [True] * 6
    assert dead[0][1][ENTRY_FIELD.encode()] == b"{not json"
    assert stream.xlen(key) == 0
    assert "dead-letter" in caplog.text


def test_event_the_database_refuses_goes_to_the_dead_letter_stream(stream_mode, stream, issued):
    # No client string can make an event unstorable (tests/gateway/test_hostile_bodies.py); an
    # entry written by something else can.
    key = stream_mode.USAGE_STREAM_KEY
    good = make_event(issued)
    bad = json.loads(make_event(issued).to_json()) | {"api_key_id": "not-an-id"}
    stream.xadd(key, {ENTRY_FIELD: json.dumps(bad)})
    emit(good)
    assert usage_drain() == 1
    assert request_ids() == [good.request_id]
    assert stream.xlen(dead_letter_key(key)) == 1
    assert stream.xlen(key) == 0


def test_event_of_an_organization_deleted_before_the_drain_is_dropped(
    stream_mode, stream, issued, make_key, other_org
):
    kept = make_event(make_key(other_org))
    emit(make_event(issued))
    emit(kept)
    issued.api_key.organization.delete()
    usage_drain()
    assert request_ids() == [kept.request_id]
    assert stream.xlen(stream_mode.USAGE_STREAM_KEY) == 0


def test_celery_task_drains_the_stream(stream_mode, stream, issued):
    event = make_event(issued)
    emit(event)
    drain_usage_events.delay()  # eager in tests: runs here
    assert request_ids() == [event.request_id]


def test_dead_consumers_are_pruned(stream_mode, stream, issued, monkeypatch):
    from metering.usage import drain as services

    key = stream_mode.USAGE_STREAM_KEY
    emit(make_event(issued))
    usage_drain()
    stream.xgroup_createconsumer(key, GROUP, "dead-drainer")
    monkeypatch.setattr(services, "_last_prune", float("-inf"))  # a young machine's clock
    monkeypatch.setattr(services, "CONSUMER_PRUNE_IDLE_MS", -1)
    usage_drain()
    assert stream.xinfo_consumers(key, GROUP) == []
