"""Key changes reach every serving process within API_KEY_CHANGE_POLL_SECONDS, whatever made them
(another instance, manage.py, the admin) and whatever the cache (Redis, down or not, or the
embedded in-process one, which no other process can invalidate).

Every change that caches must see writes ApiKeyChange rows in its own transaction (`record`).
Each serving process runs one `ChangeFeed` in a background thread (started by the ASGI
lifespan): one indexed query for rows above its floor every poll, and the keys of new rows are
dropped from its caches (keys.verification.invalidate). The floor trails the highest id seen by
LATE_COMMIT seconds, because ids are taken at insert and rows become visible at commit: a
transaction that took a lower id and committed later is still found.
"""

import logging
import threading
import time
from collections import deque
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone

from keys import verification
from keys.models import ApiKeyChange

logger = logging.getLogger(__name__)

LATE_COMMIT = 5.0  # seconds a change's transaction may take between its insert and its commit
MAX_ROWS = 10_000  # per poll


def record(*key_ids: str) -> None:
    """Log changes to these keys, in the caller's transaction; prune rows past retention."""
    if not key_ids:
        return
    now = timezone.now()
    ApiKeyChange.objects.bulk_create([ApiKeyChange(key_id=k, at=now) for k in key_ids])
    horizon = now - timedelta(seconds=settings.API_KEY_CHANGE_RETENTION)
    ApiKeyChange.objects.filter(at__lt=horizon).delete()


class ChangeFeed:
    """The changes this process has not applied yet, one query per poll."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.floor: int | None = None  # every row at or below it has been applied
        self.top = 0  # the highest id seen
        self.marks: deque[tuple[float, int]] = deque()  # (when, top then)
        self.seen: set[int] = set()  # ids above the floor already applied

    def poll(self) -> list[str]:
        """The key ids changed since the last poll (the first poll only sets the floor: a
        process starting now has nothing cached from before)."""
        now = self.clock()
        if self.floor is None:
            self.floor = self.top = ApiKeyChange.objects.aggregate(top=Max("id"))["top"] or 0
            return []
        rows = list(
            ApiKeyChange.objects.filter(id__gt=self.floor)
            .order_by("id")
            .values_list("id", "key_id")[:MAX_ROWS]
        )
        changed = [key_id for pk, key_id in rows if pk not in self.seen]
        self.seen.update(pk for pk, _ in rows)
        if rows:
            self.top = max(self.top, rows[-1][0])
        self.marks.append((now, self.top))
        while self.marks and self.marks[0][0] <= now - LATE_COMMIT:
            self.floor = max(self.floor, self.marks.popleft()[1])
        if len(rows) == MAX_ROWS:  # a backlog: take the rest from the next poll on
            self.floor = max(self.floor, rows[-1][0])
        self.seen = {pk for pk in self.seen if pk > self.floor}
        return changed


class _Poller:
    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return
            self.stopping = threading.Event()
            self.thread = threading.Thread(
                target=self.run, args=(self.stopping,), name="key-changes", daemon=True
            )
            self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
            self.stopping.set()
        if thread is not None:
            thread.join(timeout)

    @staticmethod
    def run(stopping: threading.Event) -> None:
        feed = ChangeFeed()
        failing = False
        interval = settings.API_KEY_CHANGE_POLL_SECONDS
        while True:
            try:
                changed = feed.poll()
                if changed:
                    verification.invalidate(*changed)
                if failing:
                    logger.warning("key change log readable again")
                failing = False
            except Exception:  # the database is down: nothing can change keys meanwhile
                if not failing:
                    logger.exception("cannot read the key change log; retrying")
                failing = True
            finally:
                close_old_connections()
            if stopping.wait(interval):
                break
        from django.db import connection

        connection.close()


_poller = _Poller()


def start_polling() -> None:
    """Start this process's poller (idempotent). Serving processes only: the ASGI lifespan."""
    if settings.API_KEY_CHANGE_POLL_SECONDS > 0:
        _poller.start()


def stop_polling() -> None:
    _poller.stop()
