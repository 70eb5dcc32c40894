"""FailoverRedisCache: a Redis outage degrades to an in-process cache instead of 500s."""

import logging
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from infra.breaker import reset_breakers
from infra.cache import FailoverRedisCache
from tests.redis_server import redis_process, redis_server_available


@pytest.fixture(autouse=True)
def _fresh_breakers():
    reset_breakers()
    yield
    reset_breakers()


def make_cache(url: str, **options) -> FailoverRedisCache:
    """A cache on `url`. How long it skips Redis after a failure is REDIS_RETRY_SECONDS, the
    one setting of infra/breaker.py: the tests set it."""
    return FailoverRedisCache(
        url,
        {
            "KEY_PREFIX": "failover-test",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "FALLBACK_MAX_TTL": options.get("max_ttl", 10.0),
            },
        },
    )


@pytest.fixture
def private_redis():
    if not redis_server_available():
        pytest.skip("needs the redis-server binary")
    with redis_process() as server:
        yield server


def test_unreachable_redis_serves_from_the_fallback_and_says_so(caplog, settings):
    settings.REDIS_RETRY_SECONDS = 60
    cache = make_cache("redis://127.0.0.1:1/0")
    with caplog.at_level(logging.ERROR, logger="infra.breaker"):
        assert cache.get("missing") is None
    assert cache.degraded
    assert "unreachable" in caplog.text
    cache.set("k", "v", 300)
    assert cache.get("k") == "v"
    assert cache.get_many(["k", "other"]) == {"k": "v"}
    assert cache.add("n", 0, 60) is True
    assert cache.incr("n") == 1


def test_outage_then_recovery_replays_deletes_made_during_the_outage(private_redis, settings):
    settings.REDIS_RETRY_SECONDS = 0.0
    cache = make_cache(private_redis.url)
    cache.set("context", "stale", 300)
    assert cache.get("context") == "stale"

    private_redis.stop()
    cache.delete("context")  # e.g. a key revoked while Redis is down
    assert cache.degraded
    assert cache.get("context") is None

    private_redis.start()  # empty again (no persistence): put the stale value back by hand
    cache.primary.set("context", "stale", 300)
    # The first call after recovery replays the pending delete before reading anything.
    assert cache.get("context") is None
    assert not cache.degraded
    assert cache.primary.get("context") is None


def test_entries_written_during_an_outage_expire_quickly(private_redis, time_machine, settings):
    settings.REDIS_RETRY_SECONDS = 60
    time_machine.move_to(datetime.now(UTC))
    cache = make_cache(private_redis.url, max_ttl=5)
    private_redis.stop()
    cache.set("context", "from-db", 300)
    assert cache.get("context") == "from-db"
    time_machine.shift(6)
    assert cache.get("context") is None


def test_login_and_signup_work_while_redis_is_down(client, settings, db):
    from django.core.cache import caches

    settings.CACHES = {
        "default": {
            "BACKEND": "infra.cache.FailoverRedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 0.2,
                "SOCKET_TIMEOUT": 0.2,
                "FALLBACK_MAX_TTL": 10.0,
            },
        }
    }
    assert isinstance(caches["default"], FailoverRedisCache)  # the override took effect
    password = "correct-horse-battery-staple-42"
    response = client.post(
        reverse("accounts:signup"),
        {"email": "down@example.com", "password": password, "organization_name": "Down"},
    )
    assert response.status_code == 302
    client.logout()
    response = client.post(
        reverse("accounts:login"), {"username": "down@example.com", "password": password}
    )
    assert response.status_code == 302
    assert caches["default"].degraded


def test_closing_the_cache_is_not_taken_for_redis_answering(settings):
    """Django closes the caches after every request; that asks nothing of Redis, so it must not
    end an outage that the next real call would find still there."""
    settings.REDIS_RETRY_SECONDS = 0.0  # every call may probe
    cache = make_cache("redis://127.0.0.1:1/0")
    cache.get("k")
    assert cache.degraded
    cache.close()
    assert cache.degraded
