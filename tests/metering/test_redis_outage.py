"""One Redis degradation policy (infra/breaker.py): the cache, the per-key limiter, the per-IP
layer and the usage stream fall back together when Redis dies and come back together after
REDIS_RETRY_SECONDS, the one setting. And one background-task registry
(infra/background.py), which the server's shutdown drains."""

import asyncio
import logging
from contextlib import suppress

import pytest
import redis
from django.core.cache import caches

from infra import background as infra_background
from infra.background import background
from infra.breaker import redis_breaker, reset_breakers
from keys import verification
from metering import admission, ip_limit, limiter
from metering.models import UsageEvent
from metering.usage import ausage_emit
from tests.metering.conftest import make_event
from tests.redis_server import redis_process, redis_server_available

needs_redis_server = pytest.mark.skipif(
    not redis_server_available(), reason="needs the redis-server binary"
)
RETRY = 2.0  # long enough that no probe falls inside the outage phase, even on a busy machine
IP = "198.51.100.23"


@pytest.fixture(autouse=True)
def _fresh_state():
    reset_breakers()
    limiter.reset_state()
    ip_limit.reset_state()
    yield
    reset_breakers()
    limiter.reset_state()
    ip_limit.reset_state()


@pytest.fixture
def private_redis(settings):
    """This test's own redis-server, driving the cache, the limiters and the usage stream."""
    with redis_process() as server:
        settings.REDIS_URL = server.url
        settings.CELERY_BROKER_URL = server.url
        settings.USAGE_STREAM_KEY = "aibaas-test:{usage}:events"
        settings.GATEWAY_IP_RATE = "1000/m"
        settings.REDIS_RETRY_SECONDS = RETRY
        settings.CACHES = {
            "default": {
                "BACKEND": "infra.cache.FailoverRedisCache",
                "LOCATION": server.url,
                "OPTIONS": {
                    "SOCKET_CONNECT_TIMEOUT": 0.2,
                    "SOCKET_TIMEOUT": 0.2,
                    "FALLBACK_MAX_TTL": 10.0,
                },
            }
        }
        yield server


async def _use_everything(issued, limits) -> dict:
    """One call of each of the four users of Redis; where each of them went."""
    cache = caches["default"]
    cache.set("outage-probe", "x", 60)
    decision = await limiter.check_finish(limiter.check_start("outage", limits))
    ip = ip_limit.ip_check_start(IP)
    await ip_limit.ip_check_finish(ip)
    before = await asyncio.to_thread(UsageEvent.objects.count)
    await ausage_emit(make_event(issued))
    after = await asyncio.to_thread(UsageEvent.objects.count)
    return {
        "cache": "local" if cache.degraded else "redis",
        "limiter": decision.backend,
        "ip": "redis" if ip.future is not None else "local",
        "usage": "redis" if after == before else "database",
    }


@needs_redis_server
@pytest.mark.django_db(transaction=True)
def test_cache_limiters_and_usage_events_degrade_and_recover_together(
    private_redis, issued, caplog
):
    caplog.set_level(logging.WARNING, logger="infra.breaker")
    limits = [limiter.Limit("requests_per_minute", "requests", 60_000, 100)]
    client = redis.Redis.from_url(private_redis.url)
    everywhere = {"cache": "redis", "limiter": "redis", "ip": "redis", "usage": "redis"}

    async def scenario():
        up = await _use_everything(issued, limits)
        assert client.xlen("aibaas-test:{usage}:events") == 1
        private_redis.stop()
        caches["default"].get("outage-probe")  # the first to fail opens the one breaker
        opened_until = redis_breaker().retry_at
        down = await _use_everything(issued, limits)
        # Nobody tried Redis meanwhile: a failed try would have moved the retry time.
        skipped = redis_breaker().retry_at == opened_until
        still_down = redis_breaker().down
        private_redis.start()  # empty: no persistence in this test
        await asyncio.sleep(RETRY + 0.1)
        back = await _use_everything(issued, limits)
        return up, down, skipped, still_down, back

    up, down, skipped, still_down, back = asyncio.run(scenario())
    assert up == everywhere
    assert down == {"cache": "local", "limiter": "local", "ip": "local", "usage": "database"}
    assert skipped  # no socket timeout per call: Redis was skipped
    assert still_down
    assert back == everywhere
    assert not redis_breaker().down
    assert client.xlen("aibaas-test:{usage}:events") == 1  # the one sent after recovery
    assert UsageEvent.objects.count() == 1  # the one written during the outage
    messages = [r.getMessage() for r in caplog.records if r.name == "infra.breaker"]
    assert len([m for m in messages if "Redis unreachable" in m]) == 1
    assert f"tried again every {RETRY} s" in messages[0]
    assert any("Redis reachable again" in m for m in messages)
    client.close()


def test_the_servers_shutdown_awaits_the_background_tasks():
    from aibaas.gateway.lifespan import shutdown

    done = []

    async def late_usage_event():
        await asyncio.sleep(0.05)
        background(asyncio.sleep(0.05)).add_done_callback(lambda _: done.append("spawned"))
        done.append("event")

    async def run():
        background(late_usage_event())
        await shutdown()

    asyncio.run(run())
    assert done == ["event", "spawned"]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_shutdown_settles_an_admission_whose_client_hung_up(make_key, org, settings):
    """The client hangs up while its request is admitted: the windows keep the request but
    give its token estimate back, in a background task the shutdown waits for."""
    settings.GATEWAY_IP_RATE = ""
    issued = make_key(org, name="abandoned", tokens_per_minute=2_000)
    context = verification.authenticate_key(issued.raw_key)
    limits = limiter.limits_for(context.limits)
    limiter.reset(context.key_id)
    from aibaas.gateway.lifespan import shutdown

    async def run():
        admitting = asyncio.ensure_future(admission.aadmit(context, tokens=500))
        await asyncio.sleep(0)  # its checks are sent, their answers not read yet
        admitting.cancel()
        with suppress(asyncio.CancelledError):
            await admitting
        settling = [task for task in infra_background._tasks if not task.done()]
        await shutdown()
        return settling

    settling = asyncio.run(run())
    assert settling  # the settlement runs in the registry's task...
    assert all(task.done() for task in settling)  # ...which the shutdown waited for
    assert context.key_id not in limiter.pending.keys  # sent by the shutdown, not left behind
    windows = {w.limit.name: w.used for w in limiter.peek(context.key_id, limits)}
    assert windows["tokens_per_minute"] == 0
    limiter.reset(context.key_id)
