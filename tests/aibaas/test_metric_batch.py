"""infra/metric_batch.py: a deferred counter or histogram writes exactly what prometheus_client
would have written had each call gone straight to it, applied by the flusher thread within
FLUSH_SECONDS and by an explicit flush."""

import math
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from infra import metric_batch

BUCKETS = (0.005, 0.01, 0.1, 1, 10)
# Bounds exactly, between them, below the first, past the last, zero, negative, infinity.
OBSERVED = [0.005, 0.0051, 0.01, 0.05, 0.1, 1, 1.0000001, 9.99, 10, 11, 0, -3, 0.0001, math.inf]


def _samples(registry: CollectorRegistry) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _pair(kind, **kwargs):
    """The same labelled series in two registries: one written directly, one deferred."""
    direct_registry, deferred_registry = CollectorRegistry(), CollectorRegistry()
    direct = kind("x", "x", ["l"], registry=direct_registry, **kwargs).labels("a")
    deferred = metric_batch.deferred(
        kind("x", "x", ["l"], registry=deferred_registry, **kwargs).labels("a")
    )
    return direct, direct_registry, deferred, deferred_registry


def test_a_deferred_histogram_writes_what_prometheus_client_writes():
    direct, direct_registry, deferred, deferred_registry = _pair(Histogram, buckets=BUCKETS)
    assert isinstance(deferred, metric_batch.DeferredHistogram)
    for amount in OBSERVED * 3:
        direct.observe(amount)
        deferred.observe(amount)
    metric_batch.flush()
    assert _samples(deferred_registry) == _samples(direct_registry)
    # And again after a flush: nothing is applied twice.
    direct.observe(0.5)
    deferred.observe(0.5)
    metric_batch.flush()
    metric_batch.flush()
    assert _samples(deferred_registry) == _samples(direct_registry)


def test_a_deferred_counter_writes_what_prometheus_client_writes():
    direct, direct_registry, deferred, deferred_registry = _pair(Counter)
    assert isinstance(deferred, metric_batch.DeferredCounter)
    for amount in (1, 1, 250, 0, 0.5):
        direct.inc(amount)
        deferred.inc(amount)
    metric_batch.flush()
    assert _samples(deferred_registry) == _samples(direct_registry)
    with pytest.raises(ValueError, match="non-negative"):
        deferred.inc(-1)


def test_a_nan_goes_to_the_sum_only_as_in_prometheus_client():
    direct, direct_registry, deferred, deferred_registry = _pair(Histogram, buckets=BUCKETS)
    for histogram in (direct, deferred):
        histogram.observe(0.5)
        histogram.observe(math.nan)
    metric_batch.flush()
    got, want = _samples(deferred_registry), _samples(direct_registry)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert math.isnan(got[name]) if math.isnan(value) else got[name] == value, name


def test_the_flusher_applies_within_flush_seconds_without_being_asked():
    direct, direct_registry, deferred, deferred_registry = _pair(Counter)
    # The second change after the first was applied: the flusher sleeps between changes, it
    # does not stop.
    for amount in (7, 3):
        deferred.inc(amount)
        direct.inc(amount)
        deadline = time.monotonic() + metric_batch.FLUSH_SECONDS + 5
        while _samples(deferred_registry) != _samples(direct_registry):
            assert time.monotonic() < deadline, f"the flusher thread did not apply {amount}"
            time.sleep(0.05)


def test_gauges_are_not_deferred():
    from prometheus_client import Gauge

    gauge = Gauge("g", "g", ["l"], registry=CollectorRegistry()).labels("a")
    assert metric_batch.deferred(gauge) is gauge


def test_a_forked_child_does_not_inherit_the_lock_or_count_the_parents_pending_twice():
    import os
    import signal

    *_, deferred, _ = _pair(Counter)
    deferred.inc(5)  # pending in the parent, not applied yet
    with metric_batch._lock:  # held at the fork, as by the parent's flusher mid-flush
        pid = os.fork()
        if pid == 0:  # the child: it must be able to count, and apply only its own
            signal.alarm(10)  # a child stuck on the inherited lock dies instead of hanging
            try:
                deferred.inc(2)
                metric_batch.flush()
                child = deferred.child._value.get()
                os._exit(0 if child == 2 else 1)
            except BaseException:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    metric_batch.flush()
    assert deferred.child._value.get() == 5  # the parent's own, once
