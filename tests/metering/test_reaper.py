"""usage_reap (metering/usage/reaper.py) on registries laid out as serving processes leave them
(metering/usage/inflight.py's keys), on a private Redis: who is dead, exactly-once claims, what an
interrupted event holds."""

import json
import threading
import time
from datetime import date
from decimal import Decimal

import pytest
import redis

from metering.models import QuotaCounter, UsageEvent
from metering.usage.inflight import PREFIX, PROCESSES_KEY, keys_of
from metering.usage.reaper import CLAIM, INTERRUPTED_STATUS, marker, usage_reap
from tests.factories import ModelPriceFactory
from tests.metering.conftest import make_event
from tests.redis_server import redis_process, redis_server_available

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def control(settings):
    if not redis_server_available():
        pytest.skip("needs the redis-server binary for a private Redis")
    with redis_process() as server:
        settings.REDIS_URL = server.url
        settings.USAGE_INFLIGHT_TTL_SECONDS = 0  # a fresh Redis may be asked at once
        client = redis.Redis.from_url(server.url)
        yield client
        client.close()


def register(control, process: str, events, checkpoints=None, *, alive=False) -> None:
    inflight, progress, alive_key = keys_of(process)
    control.sadd(PROCESSES_KEY, process)
    for event in events:
        control.hset(
            inflight, event.request_id, marker(json.loads(event.to_json()), test_mode=False)
        )
    if checkpoints:
        control.hset(progress, mapping=checkpoints)
    if alive:
        control.set(alive_key, "1", px=10_000)


def test_a_dead_process_s_requests_get_one_interrupted_event_each(control, issued):
    ModelPriceFactory(model__name="demo-chat", input_per_million=1, output_per_million=2)
    events = [make_event(issued, input_tokens=11 + i, output_tokens=0) for i in range(3)]
    register(control, "host:101:aa", events, {events[0].request_id: 42})
    assert usage_reap() == 3
    stored = {e.request_id: e for e in UsageEvent.objects.all()}
    assert set(stored) == {e.request_id for e in events}
    first = stored[events[0].request_id]
    assert (first.status_code, first.input_tokens, first.output_tokens) == (599, 11, 42)
    assert first.estimated and first.cost == Decimal(11 * 1 + 42 * 2) / 1_000_000
    assert stored[events[1].request_id].output_tokens == 0  # no checkpoint: none counted
    assert {e.status_code for e in stored.values()} == {INTERRUPTED_STATUS}
    # Its registry is gone: a second run writes nothing.
    assert control.smembers(PROCESSES_KEY) == set()
    assert control.exists(*keys_of("host:101:aa")) == 0
    assert usage_reap() == 0


def test_an_interrupted_request_settles_the_monthly_quota_to_what_it_used(control, issued):
    period = date(2026, 12, 1)
    counter = QuotaCounter.objects.create(
        organization_id=issued.api_key.organization_id, period=period, requests=1, tokens=1000
    )
    event = make_event(
        issued, input_tokens=11, quota_period=period, quota_generation=0, quota_tokens=1000
    )
    register(control, "host:105:ab", [event], {event.request_id: 42})
    assert usage_reap() == 1
    counter.refresh_from_db()
    assert (counter.requests, counter.tokens) == (1, 53)  # the estimate, settled to 11 + 42


def test_a_live_process_is_not_reaped(control, issued):
    register(control, "host:102:bb", [make_event(issued)], alive=True)
    assert usage_reap() == 0
    assert UsageEvent.objects.count() == 0
    assert control.hlen(keys_of("host:102:bb")[0]) == 1


def test_a_request_whose_own_event_is_stored_keeps_it(control, issued):
    from metering.services import usage_record

    event = make_event(issued, output_tokens=77)
    usage_record(events=[event])  # written directly; the process died before the marker went
    register(control, "host:103:cc", [event], {event.request_id: 5})
    usage_reap()
    stored = UsageEvent.objects.get()
    assert (stored.status_code, stored.output_tokens) == (200, 77)


def test_concurrent_reapers_claim_each_dead_process_once(control, issued):
    processes = {f"host:{200 + n}:dd": [make_event(issued) for _ in range(20)] for n in range(4)}
    for process, events in processes.items():
        register(control, process, events)
    results = []

    def reap() -> None:
        from django.db import connection

        try:
            results.append(usage_reap())
        finally:
            connection.close()

    threads = [threading.Thread(target=reap) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 80  # each marker written by one reaper only
    assert UsageEvent.objects.count() == 80


def test_a_claimed_process_is_left_to_its_reaper_until_the_claim_expires(control, issued):
    events = [make_event(issued) for _ in range(5)]
    register(control, "host:300:ff", events)
    # Another reaper claimed it (and is writing, or died doing so).
    [(process, markers, _)] = control.eval(CLAIM, 1, PROCESSES_KEY, PREFIX, "other", 60_000)
    assert process == b"host:300:ff" and len(markers) == 10
    assert usage_reap() == 0
    assert UsageEvent.objects.count() == 0
    control.pexpire(PREFIX + "reaping:host:300:ff", 1)  # its claim runs out
    time.sleep(0.01)
    assert usage_reap() == 5
    assert UsageEvent.objects.count() == 5


def test_a_restarted_redis_is_not_reaped_before_the_ttl(control, settings, issued):
    settings.USAGE_INFLIGHT_TTL_SECONDS = 10  # the live processes have not beaten yet
    register(control, "host:104:ee", [make_event(issued)])
    assert usage_reap() == 0
    assert control.hlen(keys_of("host:104:ee")[0]) == 1


def test_an_event_ends_its_marker_in_one_evalsha_even_after_redis_forgot_the_script(
    control, issued, settings
):
    """ausage_emit with the process's registry started: the event's XADD and the end of its
    marker are one EVALSHA of a registered script (loaded again when Redis lost it); only a
    stream's progress checkpoint is touched."""
    import asyncio

    from metering.usage import emit as usage_events
    from metering.usage import inflight

    settings.CELERY_BROKER_URL = settings.REDIS_URL
    settings.USAGE_STREAM_KEY = "aibaas-test:{usage}:events"
    settings.USAGE_INFLIGHT_TTL_SECONDS = 10
    control.script_load(inflight.EMIT)
    first, second = make_event(issued), make_event(issued)

    async def run():
        await inflight.start()
        registry = inflight.current()
        for event in (first, second):
            registry.admitted(event.request_id, "{}")
        registry.streaming(second.request_id, object())  # a stream (its checkpoints: none)
        control.hset(registry.progress, second.request_id, 7)
        await asyncio.sleep(0.05)  # the markers' HSETs went out
        before = control.info("commandstats")
        await usage_events.ausage_emit(first)
        control.script_flush()
        await usage_events.ausage_emit(second)
        after = control.info("commandstats")
        markers = control.hgetall(registry.inflight)
        progress = control.hgetall(registry.progress)
        await inflight.stop()
        return before, after, markers, progress

    before, after, markers, progress = asyncio.run(run())
    calls = {
        name: after.get(f"cmdstat_{name}", {}).get("calls", 0)
        - before.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("eval", "evalsha", "script|load")
    }
    assert calls == {"eval": 0, "evalsha": 3, "script|load": 1}  # the second: NOSCRIPT, load
    assert markers == {} and progress == {}
    assert control.xlen("aibaas-test:{usage}:events") == 2
    assert UsageEvent.objects.count() == 0  # both went to the stream
