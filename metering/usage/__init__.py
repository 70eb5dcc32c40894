"""Usage events: one per authenticated /v1 request, never lost, never counted twice.

emit.py sends each to the Redis stream `aibaas:{usage}:events` (or, without a broker or while
Redis is down, straight into the table); drain.py moves the stream into the table through
record.py's `usage_record`, idempotent by request id and settling the monthly quota's tokens
once; inflight.py keeps a marker per admitted request in Redis so that reaper.py closes the
requests of a dead process as `interrupted`. Invariants and why: docs/usage-events.md.
"""

from metering.usage import inflight
from metering.usage.drain import GROUP, usage_drain
from metering.usage.emit import ausage_emit
from metering.usage.events import UsageEventData
from metering.usage.reaper import INTERRUPTED, INTERRUPTED_STATUS, marker, usage_reap
from metering.usage.record import usage_record

__all__ = [
    "GROUP",
    "INTERRUPTED",
    "INTERRUPTED_STATUS",
    "UsageEventData",
    "ausage_emit",
    "marker",
    "start",
    "stop",
    "usage_drain",
    "usage_reap",
    "usage_record",
]


async def start() -> None:
    """Start this event loop's in-flight registry (the server's lifespan); without a broker it
    also runs the reaper after each heartbeat."""
    await inflight.start(reap=usage_reap)


async def stop() -> None:
    await inflight.stop()
