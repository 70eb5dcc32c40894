"""Redis killed with kill -9 under load loses no billable usage event and doubles none (issue
10, item 3).

The production setup: the production start command (gunicorn, deploy/gunicorn.conf.py, 2
uvicorn workers), PostgreSQL, a private redis-server run
with the checked-in deploy/redis.conf (the README's production Redis: appendonly, appendfsync
always, noeviction), and the drain Celery beat runs. 1,000 chat requests at concurrency 16;
Redis is killed -9 in the middle and restarted on the same directory a second later, while the
load goes on past the events' fallback window (5 s: writes go to PostgreSQL directly, then back
to the stream). Then the stream is drained, and every response served (its X-Request-ID) must
have exactly one usage event in PostgreSQL, and no event may exist without a response.

Run with a Redis that keeps nothing on disk (the previous test setup), the same test loses the
events Redis had acknowledged and not yet handed to the drain (about one drain period's worth).
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.conf import settings
from django.db.models import Count

from metering.models import UsageEvent
from metering.services import GROUP, usage_drain
from metering.usage.inflight import HEARTBEAT_SECONDS, PROCESSES_KEY, keys_of
from tests.metering.durability.production import Drainer, assert_reconciled
from tests.servers import production_server

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

REQUESTS = 1_000
CONCURRENCY = 16
KILL_AFTER = 250  # responses
DOWN_SECONDS = 1.0
# ~10 tokens at 12 ms each: the load lasts several seconds, past the fallback window.
BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}
SERVER_ENV = {"GATEWAY_IP_RATE": "", "DEMO_TOKEN_DELAY_SECONDS": "0.012", "LOG_LEVEL": "ERROR"}
SETTLE_SECONDS = 30.0


class Load:
    """REQUESTS chat requests from CONCURRENCY threads; `at(n, action)` runs action on a thread
    of its own once n responses came back."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.done = 0
        self.lock = threading.Lock()
        self.triggers: list[tuple[int, threading.Thread]] = []
        self.local = threading.local()

    def at(self, responses: int, action) -> None:
        self.triggers.append((responses, threading.Thread(target=action)))

    def one(self, _: int) -> tuple[int, str | None]:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(base_url=self.base, timeout=30)
        response = client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {self.key}"}
        )
        with self.lock:
            self.done += 1
            for count, thread in self.triggers:
                if count == self.done:
                    thread.start()
        return response.status_code, response.headers.get("x-request-id")

    def run(self) -> list[tuple[int, str | None]]:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(self.one, range(REQUESTS)))
        for _, thread in self.triggers:
            thread.join()
        return results


def _drain_everything(control: redis.Redis, served: set[str]) -> dict[str, int]:
    """Drain (taking over what the load's drainer left pending) until every served request has
    its event or nothing more comes; the events' counts by request id."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        usage_drain(reclaim_idle_ms=0)
        counts = dict(
            UsageEvent.objects.values_list("request_id").annotate(n=Count("id")).order_by()
        )
        if served <= set(counts) and control.xlen(settings.USAGE_STREAM_KEY) == 0:
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def _markers(control: redis.Redis) -> int:
    return sum(
        control.hlen(keys_of(process.decode())[0]) for process in control.smembers(PROCESSES_KEY)
    )


def _wait_for_no_markers(control: redis.Redis) -> None:
    deadline = time.monotonic() + 5 * HEARTBEAT_SECONDS
    while _markers(control) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _markers(control) == 0


def test_redis_killed_9_under_load_loses_and_doubles_no_usage_event(
    settings, private_redis, metered_key
):
    settings.REDIS_URL = settings.CELERY_BROKER_URL = private_redis.url
    env = {**SERVER_ENV, "REDIS_URL": private_redis.url, "CELERY_BROKER_URL": private_redis.url}
    kills = []

    def kill_and_restart() -> None:
        private_redis.stop()  # SIGKILL
        kills.append(time.monotonic())
        time.sleep(DOWN_SECONDS)
        private_redis.start()  # same port, same directory: it loads its append-only file

    with production_server(extra_env=env) as server:
        load = Load(server.url, metered_key)
        load.at(KILL_AFTER, kill_and_restart)
        with Drainer(every=0.5):
            started = time.monotonic()
            results = load.run()
            elapsed = time.monotonic() - started
        control = redis.Redis.from_url(private_redis.url)
        served = {request_id for _, request_id in results if request_id}
        counts = _drain_everything(control, served)
        # The in-flight markers of every request are gone, those whose removal failed while
        # Redis was down included (retried by the workers' heartbeats).
        _wait_for_no_markers(control)

    assert kills, "Redis was never killed"
    assert elapsed - (kills[0] - started) > 5.5, "the load ended inside the fallback window"
    assert [status for status, _ in results if status != 200] == []
    assert len(served) == REQUESTS  # every response carried its own X-Request-ID
    lost = served - set(counts)
    unknown = set(counts) - served
    doubled = {request_id: n for request_id, n in counts.items() if n > 1}
    assert (len(lost), len(unknown), doubled) == (0, 0, {})
    assert control.xlen(settings.USAGE_STREAM_KEY) == 0
    assert control.xpending(settings.USAGE_STREAM_KEY, GROUP)["pending"] == 0
    control.close()
    assert_reconciled()
