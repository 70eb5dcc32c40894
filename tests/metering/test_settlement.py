"""The monthly quota's tokens are settled where the usage event is stored (usage_record), for
the events stored now only: a re-drained or re-sent event never settles twice, and an event
that reaches the table has settled (issue 10, item 3)."""

import pytest

from metering.models import QuotaCounter, UsageEvent
from metering.quota import QuotaAsk, quota_reset
from metering.quota import counter as quota_counter
from metering.services import GROUP, usage_drain, usage_record
from metering.usage.events import ENTRY_FIELD
from tests.metering.conftest import emit, make_event

pytestmark = pytest.mark.django_db

ESTIMATE = 100


def admitted(issued, count: int, **fields):
    """`count` requests admitted by the quota at ESTIMATE tokens each, and their events (which
    used 10 + i tokens each)."""
    organization_id = issued.api_key.organization_id
    events = []
    for i in range(count):
        decision = quota_counter.admit(
            QuotaAsk(organization_id, request_limit=1_000, token_limit=1_000_000, tokens=ESTIMATE)
        )
        assert decision.allowed
        events.append(
            make_event(
                issued,
                input_tokens=4,
                output_tokens=6 + i,
                quota_period=decision.period,
                quota_generation=decision.generation,
                quota_tokens=ESTIMATE,
                **fields,
            )
        )
    return events


def counter(issued) -> tuple[int, int]:
    row = QuotaCounter.objects.get(organization_id=issued.api_key.organization_id)
    return row.requests, row.tokens


def used(events) -> int:
    return sum(event.input_tokens + event.output_tokens for event in events)


def test_recording_settles_the_estimate_to_the_tokens_used(issued):
    events = admitted(issued, 5)
    assert counter(issued) == (5, 5 * ESTIMATE)
    usage_record(events=events)
    assert counter(issued) == (5, used(events))


def test_recording_the_same_events_again_settles_nothing(issued):
    events = admitted(issued, 5)
    usage_record(events=events[:3])
    usage_record(events=events)  # a replayed batch with two new events
    usage_record(events=events)
    usage_record(events=[*events, *events])  # duplicates inside one batch
    assert counter(issued) == (5, used(events))
    assert UsageEvent.objects.count() == 5


def test_an_event_without_quota_settles_nothing(issued):
    [event] = admitted(issued, 1)
    usage_record(events=[make_event(issued, input_tokens=1_000)])
    assert counter(issued) == (1, ESTIMATE)
    usage_record(events=[event])
    assert counter(issued) == (1, used([event]))


def test_a_settlement_after_a_reset_leaves_the_new_generation_alone(issued):
    from accounts.actors import Actor

    events = admitted(issued, 2)
    quota_reset(issued.api_key.organization, actor=Actor.for_system("tests"))
    [after] = admitted(issued, 1)
    usage_record(events=[*events, after])
    assert counter(issued) == (1, used([after]))


@pytest.mark.redis
def test_re_draining_the_same_batch_twice_leaves_the_counters_exact(stream_mode, stream, issued):
    key = stream_mode.USAGE_STREAM_KEY
    events = admitted(issued, 20)
    for event in events:
        emit(event)
    # A drainer reads the batch and dies after its commit, before its ack: the batch is read
    # again (reclaimed) by the next drain; and every XADD was retried (a duplicate entry each).
    entries = stream.xrange(key)
    assert usage_drain() == 20
    for _, fields in entries:
        stream.xadd(key, {ENTRY_FIELD: fields[ENTRY_FIELD.encode()]})
    assert usage_drain() == 20
    for _, fields in entries[:7]:
        stream.xadd(key, {ENTRY_FIELD: fields[ENTRY_FIELD.encode()]})
    stream.xreadgroup(GROUP, "crashed-drainer", {key: ">"}, count=100)
    assert usage_drain(reclaim_idle_ms=0) == 7
    assert stream.xlen(key) == 0
    assert UsageEvent.objects.count() == 20
    assert counter(issued) == (20, used(events))


def test_an_interrupted_event_and_the_requests_own_event_settle_once(issued):
    """metering/usage/reaper.py may write a request's event (599, interrupted) while its own
    event is on its way: whichever is stored first settles, the other is dropped with its
    settlement."""
    from dataclasses import replace

    first, second = admitted(issued, 2)
    usage_record(events=[replace(first, status_code=599, error_code="interrupted")])
    usage_record(events=[replace(first, output_tokens=500)])
    usage_record(events=[second])
    usage_record(events=[replace(second, status_code=599, output_tokens=0)])
    assert counter(issued) == (2, used([first, second]))
    assert UsageEvent.objects.get(request_id=first.request_id).status_code == 599
