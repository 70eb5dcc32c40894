"""The Redis cache, with a per-process fallback while Redis is unreachable.

django-redis raises on a connection error, which would turn a Redis outage into 500s on every
page and every /v1 call. This backend wraps django-redis and serves from an in-process
LocMemCache while the server's breaker (infra/breaker.py, REDIS_RETRY_SECONDS) is open.
Invariants: entries written during an outage live at most FALLBACK_MAX_TTL seconds (state
changed elsewhere, a revocation on another instance, is re-read soon); deletes that could not
reach Redis are replayed before Redis serves anything again (an invalidation made during the
outage is never undone by a stale Redis entry).
"""

import logging
import threading
from contextlib import suppress
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django_redis.cache import RedisCache
from django_redis.exceptions import ConnectionInterrupted

from infra import redis_clients
from infra.breaker import breaker_for

logger = logging.getLogger(__name__)

REDIS_ERRORS = (ConnectionInterrupted, *redis_clients.REDIS_ERRORS)


class FailoverRedisCache(BaseCache):
    def __init__(self, server: str, params: dict) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS", {}))
        self.fallback_max_ttl = float(options.pop("FALLBACK_MAX_TTL"))
        primary_params = dict(params, OPTIONS=options)
        self.primary = RedisCache(server, primary_params)
        self.fallback = LocMemCache(
            f"failover-{id(self)}",
            {
                "KEY_PREFIX": params.get("KEY_PREFIX", ""),
                "VERSION": params.get("VERSION", 1),
                "OPTIONS": {"MAX_ENTRIES": 50_000},
            },
        )
        self.breaker = breaker_for(server)
        self._pending_deletes: set[str] = set()
        self._lock = threading.Lock()

    # --- state ----------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self.breaker.down

    def _replay_pending_deletes(self) -> None:
        """Deletes made during the outage, replayed before Redis serves anything again."""
        with self._lock:
            pending = list(self._pending_deletes)
        if pending:
            self.primary.client.get_client(write=True).delete(*pending)
            with self._lock:
                self._pending_deletes.difference_update(pending)

    def _call(self, name: str, *args, **kwargs) -> tuple[bool, Any]:
        """(True, result) from Redis, or (False, None) when Redis is down or failed now."""
        breaker = self.breaker
        if not breaker.usable():
            return False, None
        try:
            if self._pending_deletes:
                self._replay_pending_deletes()
            result = getattr(self.primary, name)(*args, **kwargs)
        except REDIS_ERRORS as error:
            breaker.failed(error)
            return False, None
        breaker.succeeded()
        return True, result

    def _fallback_timeout(self, timeout):
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None or timeout > self.fallback_max_ttl:
            return self.fallback_max_ttl
        return timeout

    # --- the cache API --------------------------------------------------------------------

    def get(self, key, default=None, version=None):
        ok, value = self._call("get", key, default, version=version)
        return value if ok else self.fallback.get(key, default, version=version)

    def get_many(self, keys, version=None):
        ok, values = self._call("get_many", keys, version=version)
        return values if ok else self.fallback.get_many(keys, version=version)

    def has_key(self, key, version=None):
        ok, value = self._call("has_key", key, version=version)
        return value if ok else self.fallback.has_key(key, version=version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        ok, result = self._call("set", key, value, timeout, version=version)
        if not ok:
            self.fallback.set(key, value, self._fallback_timeout(timeout), version=version)
        return result if ok else True

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        ok, result = self._call("add", key, value, timeout, version=version)
        if ok:
            return result
        return self.fallback.add(key, value, self._fallback_timeout(timeout), version=version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        ok, result = self._call("set_many", data, timeout, version=version)
        if ok:
            return result
        return self.fallback.set_many(data, self._fallback_timeout(timeout), version=version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        ok, result = self._call("touch", key, timeout, version=version)
        return result if ok else self.fallback.touch(key, self._fallback_timeout(timeout), version)

    def incr(self, key, delta=1, version=None):
        ok, result = self._call("incr", key, delta, version=version)
        return result if ok else self.fallback.incr(key, delta, version=version)

    def decr(self, key, delta=1, version=None):
        ok, result = self._call("decr", key, delta, version=version)
        return result if ok else self.fallback.decr(key, delta, version=version)

    def delete(self, key, version=None):
        self.fallback.delete(key, version=version)
        ok, result = self._call("delete", key, version=version)
        if not ok:
            with self._lock:
                self._pending_deletes.add(self.primary.make_and_validate_key(key, version))
        return bool(result) if ok else True

    def delete_many(self, keys, version=None):
        keys = list(keys)
        self.fallback.delete_many(keys, version=version)
        ok, _ = self._call("delete_many", keys, version=version)
        if not ok:
            made = {self.primary.make_and_validate_key(key, version) for key in keys}
            with self._lock:
                self._pending_deletes |= made

    def delete_pattern(self, pattern, version=None):
        self.fallback.clear()
        ok, result = self._call("delete_pattern", pattern, version=version)
        return result if ok else 0

    def clear(self):
        self.fallback.clear()
        self._call("clear")

    def close(self, **kwargs):
        # Not through _call: closing asks nothing of Redis, so it must not count as Redis
        # answering (Django closes caches after every request: it would close the breaker).
        with suppress(*REDIS_ERRORS):
            self.primary.close(**kwargs)
