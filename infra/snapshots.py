"""A value loaded from the database and reused by this process for a TTL: the mechanism behind
the model registry (aibaas/gateway/registry.py) and the price table (billing/pricing.py).

A warm read is a dict lookup (no lock, no I/O, no await); a stale read refreshes once for all
callers, in the background while the value is less than two TTLs old, never blocking the event
loop; a failed refresh serves the old value and retries after REFRESH_RETRY_SECONDS.
`invalidate()` makes this process's next read wait for a reload. Why stale-while-revalidate,
measured: docs/gateway-performance.md.
"""

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async

from infra.db import releasing_connections

logger = logging.getLogger(__name__)

T = TypeVar("T")

REFRESH_RETRY_SECONDS = 1.0
SYNC_WAIT_SECONDS = 5.0  # a sync reader waits this long for another caller's refresh


class ProcessSnapshot(Generic[T]):
    """A value loaded from the database and reused by this process for `ttl()` seconds."""

    def __init__(self, name: str, load: Callable[[], T], ttl: Callable[[], float]) -> None:
        self.name = name
        self._load = load
        self._ttl = ttl
        self._value: T | None = None
        self._loaded = False
        self._deadline = 0.0  # time.monotonic() after which the value is stale
        self._generation = 0  # bumped by invalidate(): a load started before is not fresh
        self._invalidated = False  # a change in this process: readers wait for the reload
        self._inflight: concurrent.futures.Future | None = None
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()

    # --- reads --------------------------------------------------------------------------

    def get(self) -> T:
        """The value, refreshed in this thread when stale. Not for use inside an event loop."""
        if self._loaded and time.monotonic() < self._deadline:
            return self._value  # type: ignore[return-value]
        future, owner = self._claim()
        if owner:
            self._refresh(future)
            return future.result()
        try:
            return future.result(timeout=SYNC_WAIT_SECONDS)
        except concurrent.futures.TimeoutError:
            # The refresh in flight may be queued behind this very thread (an async caller's
            # thread-sensitive load): load here rather than wait for it.
            return self._load()

    async def aget(self) -> T:
        """The value; when invalidated or never loaded, awaits one shared refresh without
        blocking the loop; when only older than its TTL, the value as it is, while one
        refresh runs in the background."""
        if self._loaded and time.monotonic() < self._deadline:
            return self._value  # type: ignore[return-value]
        future, owner = self._claim()
        if owner:
            task = asyncio.ensure_future(
                sync_to_async(releasing_connections(self._refresh))(future)
            )
            self._tasks.add(task)
            task.add_done_callback(lambda task: self._refresh_task_done(task, future))
        if (
            self._loaded
            and not self._invalidated
            and time.monotonic() < self._deadline + self._ttl()
        ):
            return self._value  # type: ignore[return-value]
        return await asyncio.wrap_future(future)

    def invalidate(self) -> None:
        """Forget the value: the next read loads it again."""
        with self._lock:
            self._generation += 1
            self._deadline = 0.0
            self._invalidated = True

    def clear(self) -> None:
        """Drop the value entirely (tests)."""
        with self._lock:
            self._generation += 1
            self._value = None
            self._loaded = False
            self._deadline = 0.0
            self._invalidated = False

    # --- refresh ------------------------------------------------------------------------

    def _claim(self) -> tuple[concurrent.futures.Future, bool]:
        """(the in-flight refresh, True if the caller must run it)."""
        with self._lock:
            if self._inflight is not None:
                return self._inflight, False
            future: concurrent.futures.Future = concurrent.futures.Future()
            # Running already: cancelling one waiter's asyncio wrapper cannot cancel it.
            future.set_running_or_notify_cancel()
            self._inflight = future
            return future, True

    def _refresh_task_done(self, task: asyncio.Task, future: concurrent.futures.Future) -> None:
        self._tasks.discard(task)
        if not future.done():
            # The task was cancelled (its event loop shut down) before the load could finish:
            # release the waiters and let the next read start a new refresh.
            with self._lock:
                if self._inflight is future:
                    self._inflight = None
            _settle(future, error=RuntimeError(f"{self.name} refresh was cancelled"))

    def _refresh(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            generation = self._generation
        try:
            value = self._load()
        except Exception as error:
            with self._lock:
                if self._inflight is future:
                    self._inflight = None
                has_previous, previous = self._loaded, self._value
                if has_previous:
                    # Serve the last good value for a moment rather than fail requests.
                    self._deadline = time.monotonic() + REFRESH_RETRY_SECONDS
            if has_previous:
                logger.exception("%s refresh failed; serving the previous snapshot", self.name)
                _settle(future, value=previous)
            else:
                _settle(future, error=error)
            return
        with self._lock:
            self._value = value
            self._loaded = True
            # Loaded across an invalidation: good for the callers waiting now, but stale.
            fresh = generation == self._generation
            self._deadline = time.monotonic() + self._ttl() if fresh else 0.0
            if fresh:
                self._invalidated = False
            if self._inflight is future:
                self._inflight = None
        _settle(future, value=value)


def _settle(future: concurrent.futures.Future, *, value=None, error=None) -> None:
    """Resolve `future` unless it already is (a cancelled refresh task may have settled it)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


# --- the model registry -----------------------------------------------------------------
