"""The writer killed mid-batch loses nothing and counts nothing twice (issue 4, item 6).

A real drainer process (`usage_drain`, unmodified: no test hook in the code) is SIGKILLed at the
two points where a crash matters, pinned from outside:

- before its commit: the test holds a SHARE lock on the events table, so the drainer's INSERT
  of its first batch waits; the test kills it there (the batch was read: it is pending);
- after its commit, before its XACK: the test also pauses Redis writes (CLIENT PAUSE WRITE)
  and then lets the INSERT through; the drainer commits and blocks on its XACK; the test sees
  the committed rows and kills it there (the batch is stored *and* still pending).

Then a second drainer runs (reclaim idle time 0: the first one is known dead) and every event
must be in the table exactly once, with the stream and the pending list empty. A private
redis-server is used so that pausing it disturbs no one else.
"""

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis
from django.db import connection
from django.db.models import Count, Sum

from metering.models import UsageEvent
from metering.services import GROUP
from tests.metering.conftest import emit, make_event
from tests.redis_server import redis_process, redis_server_available
from tests.servers import ROOT
from tests.servers import test_database_url as database_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

EVENTS = 1_200
BATCH = 500
WAIT_SECONDS = 30.0
DRAIN = (
    "import django; django.setup(); from metering.services import usage_drain; "
    "print('drained', usage_drain(batch_size={batch}, reclaim_idle_ms={idle}), flush=True)"
)


@pytest.fixture
def private_redis():
    if not redis_server_available():
        pytest.skip("needs the redis-server binary for a private, pausable Redis")
    with redis_process() as server:
        yield server


def start_drainer(redis_url: str, *, reclaim_idle_ms: int) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        DJANGO_SETTINGS_MODULE="aibaas.settings",
    )
    code = DRAIN.format(batch=BATCH, idle=reclaim_idle_ms)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"drainer exited ({process.returncode}) before {what}:\n{process.stdout.read()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def insert_is_waiting_on_the_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"metering_usageevent\"%%'"
        )
        return cursor.fetchone()[0] > 0


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("crash_point", ["before_commit", "after_commit_before_ack"])
def test_drainer_killed_mid_batch_loses_nothing_and_counts_nothing_twice(
    settings, private_redis, make_key, org, crash_point
):
    settings.REDIS_URL = settings.CELERY_BROKER_URL = private_redis.url
    issued = make_key(org, name="kill-test")
    emitted = [make_event(issued, input_tokens=i, output_tokens=2 * i) for i in range(EVENTS)]
    for event in emitted:
        emit(event)
    control = redis.Redis.from_url(private_redis.url)
    assert control.xlen(settings.USAGE_STREAM_KEY) == EVENTS

    lock = psycopg.connect(database_url())
    drainer = None
    paused = False
    try:
        lock.execute("LOCK TABLE metering_usageevent IN SHARE MODE")
        drainer = start_drainer(private_redis.url, reclaim_idle_ms=60_000)
        wait_for(insert_is_waiting_on_the_lock, "its first INSERT", drainer)
        if crash_point == "before_commit":
            kill(drainer)
            lock.rollback()
            expected_rows = 0
        else:
            control.client_pause(60_000, all=False)  # writes wait: the XACK cannot happen
            paused = True
            lock.rollback()
            wait_for(lambda: UsageEvent.objects.count() == BATCH, "its commit", drainer)
            kill(drainer)
            expected_rows = BATCH
    finally:
        if drainer is not None and drainer.poll() is None:
            drainer.kill()
            drainer.wait()
        if paused:
            control.client_unpause()
        lock.close()

    # The batch the dead drainer read is pending (unacked), and stored or not per crash point.
    assert control.xpending(settings.USAGE_STREAM_KEY, GROUP)["pending"] == BATCH
    assert control.xlen(settings.USAGE_STREAM_KEY) == EVENTS
    assert UsageEvent.objects.count() == expected_rows

    rerun = start_drainer(private_redis.url, reclaim_idle_ms=0)
    output, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, output
    assert f"drained {EVENTS}" in output

    counts = dict(UsageEvent.objects.values_list("request_id").annotate(n=Count("id")).order_by())
    assert counts == {event.request_id: 1 for event in emitted}
    totals = UsageEvent.objects.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
    assert totals == {"i": sum(range(EVENTS)), "o": 2 * sum(range(EVENTS))}
    assert control.xlen(settings.USAGE_STREAM_KEY) == 0
    assert control.xpending(settings.USAGE_STREAM_KEY, GROUP)["pending"] == 0
    control.close()
