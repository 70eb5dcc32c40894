"""One Redis degradation policy: a circuit breaker per Redis server, shared by everything that
talks to it (the cache, the per-key limiter, the per-IP layer, the usage stream).

After a failure the server is skipped for REDIS_RETRY_SECONDS: each user falls back its own way
(the cache and the limiters count in the process, usage events go straight to the database),
so an outage costs one timeout per process, not one per call. Then one caller probes it. The
transitions are logged once each, and the state is exposed for /readyz and metrics.
"""

import logging
import threading
import time
from datetime import UTC, datetime

from django.conf import settings

from infra import metrics
from infra.memo import per_settings

logger = logging.getLogger(__name__)


class Breaker:
    """The state of one Redis server, as this process saw it last."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.down_since: datetime | None = None
        self.retry_at = 0.0
        self.fallbacks = 0
        # Bumped when Redis goes down: its clients then drop the connections they pooled before
        # (infra/redis_clients.py), which a restarted server no longer knows.
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def usable(self) -> bool:
        """Redis, unless it failed lately; once the retry interval passed, one caller (this
        one) probes it while the others keep falling back."""
        if self.down_since is None:
            return True
        with self.lock:
            now = time.monotonic()
            if self.down_since is None or now >= self.retry_at:
                self.retry_at = now + settings.REDIS_RETRY_SECONDS
                return True
            return False

    def failed(self, error: BaseException) -> None:
        with self.lock:
            first = self.down_since is None
            if first:
                self.down_since = datetime.now(UTC)
                self.outages += 1
            self.retry_at = time.monotonic() + settings.REDIS_RETRY_SECONDS
        if first:
            metrics.REDIS_BREAKER_OPENS.inc()
            logger.error(
                "Redis unreachable (%s: %s): the cache and the rate limiters run per process, "
                "usage events go to the database; Redis is tried again every %s s",
                type(error).__name__,
                error,
                settings.REDIS_RETRY_SECONDS,
            )

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        with self.lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            logger.warning("Redis reachable again (down since %s)", since.isoformat())

    def count_fallback(self) -> None:
        with self.lock:
            self.fallbacks += 1
        metrics.REDIS_FALLBACKS.inc()

    def reset(self) -> None:
        with self.lock:
            self.down_since, self.retry_at, self.fallbacks = None, 0.0, 0


_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()


def breaker_for(url: str) -> Breaker:
    """The process's breaker of the Redis server at `url` (made on first use)."""
    breaker = _breakers.get(url)
    if breaker is None:
        with _lock:
            breaker = _breakers.setdefault(url, Breaker(url))
    return breaker


@per_settings
def redis_breaker() -> Breaker:
    """The breaker of REDIS_URL: the limiters' and the usage stream's server."""
    return breaker_for(settings.REDIS_URL)


def reset_breakers() -> None:
    """Forget every server's failures (tests)."""
    for breaker in list(_breakers.values()):
        breaker.reset()
