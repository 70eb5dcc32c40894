"""Counts and observations of the request path kept in process memory and applied to
prometheus_client in one go (infra/metrics.py's `child` hands these out).

Why: in multiprocess mode (PROMETHEUS_MULTIPROC_DIR) every prometheus_client increment takes a
lock, asks os.getpid() and writes a file-backed mmap: about 2 µs, eight times per /v1 request.
Here an increment is an addition under one lock. What accumulated is applied by a flusher thread
FLUSH_SECONDS after the first change (then it sleeps until the next change), by every
exposition of this process before it reads (a scrape never misses the answering process's own
counts) and at exit. So a worker's counts reach a scrape answered by another worker within
FLUSH_SECONDS, and a process killed with SIGKILL loses at most its last FLUSH_SECONDS of counts.
The values written are the same as prometheus_client's own (tests/aibaas/test_metric_batch.py).
"""

import atexit
import os
import threading
import time
from bisect import bisect_left

FLUSH_SECONDS = 1.0

_lock = threading.Lock()
_dirty: list = []  # entries with something to apply
_wake = threading.Event()  # set: something waits to be applied
_flusher: threading.Thread | None = None


def _mark(entry) -> None:
    """`entry` has something to apply (the caller holds _lock)."""
    entry.dirty = True
    _dirty.append(entry)
    if not _wake.is_set():
        _wake.set()
        _start_flusher()


def _start_flusher() -> None:
    global _flusher
    if _flusher is None:  # not started yet (a forked child starts without one)
        _flusher = threading.Thread(target=_flush_forever, name="metrics-flush", daemon=True)
        _flusher.start()


def _flush_forever() -> None:
    while True:
        _wake.wait()
        time.sleep(FLUSH_SECONDS)  # the changes of the next second ride along
        _wake.clear()
        flush()


def flush() -> None:
    """Apply everything accumulated (any thread; cheap when nothing is)."""
    with _lock:
        entries = _dirty[:]
        _dirty.clear()
        taken = [entry.take() for entry in entries]
    for entry, values in zip(entries, taken, strict=True):
        entry.apply(values)


atexit.register(flush)


def _after_fork_in_child() -> None:
    """A forked child (a Celery pool process) starts with a fresh lock and no flusher: the
    parent's lock may have been held at the fork, and what the parent had not applied yet is
    the parent's to apply (applied here too, it would count twice)."""
    global _lock, _wake, _flusher
    _lock, _wake, _flusher = threading.Lock(), threading.Event(), None
    for entry in _dirty:
        entry.take()
    _dirty.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class DeferredCounter:
    """A labelled prometheus_client Counter child, incremented in memory."""

    __slots__ = ("child", "dirty", "pending")

    def __init__(self, child) -> None:
        self.child = child
        self.pending = 0.0
        self.dirty = False

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        with _lock:
            self.pending += amount
            if not self.dirty:
                _mark(self)

    def take(self) -> float:
        pending, self.pending, self.dirty = self.pending, 0.0, False
        return pending

    def apply(self, pending: float) -> None:
        if pending:
            self.child.inc(pending)


class DeferredHistogram:
    """A labelled prometheus_client Histogram child, observed in memory: the bucket counts and
    the sum, applied to the child's own values (prometheus_client 0.26's `_sum`, `_buckets`)."""

    __slots__ = ("bounds", "child", "counts", "dirty", "total")

    def __init__(self, child) -> None:
        self.child = child
        self.bounds = list(child._upper_bounds)  # ascending, +Inf last
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.dirty = False

    def observe(self, amount: float) -> None:
        with _lock:
            self.total += amount
            if amount == amount:  # NaN: in the sum only, as prometheus_client does
                # The first bucket whose upper bound is >= amount (Histogram.observe's rule).
                self.counts[bisect_left(self.bounds, amount)] += 1
            if not self.dirty:
                _mark(self)

    def take(self) -> tuple[float, list[int]]:
        taken = (self.total, self.counts)
        self.total, self.counts, self.dirty = 0.0, [0] * len(self.bounds), False
        return taken

    def apply(self, values: tuple[float, list[int]]) -> None:
        total, counts = values
        self.child._sum.inc(total)
        for bucket, count in zip(self.child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


def deferred(child):
    """The deferred form of a labelled child: counters and histograms; others as they are."""
    from prometheus_client import Counter, Histogram

    if isinstance(child, Counter):
        return DeferredCounter(child)
    if isinstance(child, Histogram):
        return DeferredHistogram(child)
    return child
