"""last_used_at / last_used_ip: written at most once per API_KEY_TOUCH_INTERVAL per key, off the
request path. The request only compares a timestamp in a dict; a single background thread does
the cross-process de-duplication (cache.add) and the UPDATE."""

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connections

logger = logging.getLogger(__name__)

_last_noted: dict[str, float] = {}
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-touch")
_pending: list[Future] = []


def _touch_cache_key(key_id: str) -> str:
    return f"ak:{{{key_id}}}:t"


def _write(pk: int, key_id: str, ip: str | None, at: float) -> None:
    from keys.services import api_key_mark_used

    try:
        interval = settings.API_KEY_TOUCH_INTERVAL
        if cache.add(_touch_cache_key(key_id), 1, interval):
            api_key_mark_used(pk=pk, at=datetime.fromtimestamp(at, UTC), ip=ip)
    except Exception:  # never let bookkeeping break anything; the next minute retries
        logger.warning("could not record last use of key %s", key_id, exc_info=True)
    finally:
        close_old_connections()


def note_key_use(pk: int, key_id: str, ip: str | None) -> None:
    now = time.time()
    if now - _last_noted.get(key_id, 0.0) < settings.API_KEY_TOUCH_INTERVAL:
        return
    if len(_last_noted) > 100_000:
        _last_noted.clear()
    _last_noted[key_id] = now
    future = _executor.submit(_write, pk, key_id, ip, now)
    _pending.append(future)
    if len(_pending) > 1000:
        del _pending[:500]


def flush(timeout: float = 10.0) -> None:
    """Wait for the writes queued so far (tests, and a clean shutdown)."""
    for future in list(_pending):
        future.result(timeout=timeout)
    _pending.clear()


def reset() -> None:
    _last_noted.clear()


def close_connections(timeout: float = 10.0) -> None:
    """Close the writer thread's database connection (a clean shutdown; a test database can
    only be dropped once no session holds it)."""
    _executor.submit(connections.close_all).result(timeout=timeout)
