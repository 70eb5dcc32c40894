"""`usage_reap`: the survivors' side of the in-flight registry (metering/usage/inflight.py). The
admitted requests of a serving process that died each get one usage event, status 599
(`interrupted`), with their input tokens and the output tokens of their last checkpoint.

Run by the Celery drain task and, without a broker, by the serving processes after their
heartbeat. A process is dead once its alive key expired. Exactly once: the claim is one Lua
script (NX, so two reapers never both take a registry), the events go through usage_record
(idempotent by request id), and only then are the markers deleted, by a script that checks the
claim is still its own. A reaper dying between the two: docs/usage-events.md.
"""

import json
import logging
import secrets
from dataclasses import replace
from datetime import datetime

from django.utils import timezone

from billing.pricing import cost_for
from infra import jsonfast
from infra.redis_clients import BACKGROUND_SOCKET_TIMEOUT, redis_client
from metering.usage.events import UsageEventData
from metering.usage.inflight import PREFIX, PROCESSES_KEY, ttl_seconds
from metering.usage.record import usage_record

logger = logging.getLogger(__name__)

INTERRUPTED_STATUS = 599
INTERRUPTED = "interrupted"
CLAIM_MS = 60_000

CLAIM = """
local claimed = {}
for _, process in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. process) == 0 and
     redis.call('SET', ARGV[1] .. 'reaping:' .. process, ARGV[2], 'NX', 'PX', ARGV[3]) then
    claimed[#claimed + 1] = {process,
      redis.call('HGETALL', ARGV[1] .. 'inflight:' .. process),
      redis.call('HGETALL', ARGV[1] .. 'progress:' .. process)}
  end
end
return claimed
"""
# The markers written are deleted (not the whole hash: a process taken for dead that comes
# back registers anew); the process goes from the set once nothing of it is left.
FINISH = """
local claim = ARGV[1] .. 'reaping:' .. ARGV[2]
if redis.call('GET', claim) ~= ARGV[3] then return 0 end
local inflight, progress = ARGV[1] .. 'inflight:' .. ARGV[2], ARGV[1] .. 'progress:' .. ARGV[2]
for i = 4, #ARGV do
  redis.call('HDEL', inflight, ARGV[i])
  redis.call('HDEL', progress, ARGV[i])
end
if redis.call('HLEN', inflight) == 0 and redis.call('EXISTS', ARGV[1] .. 'alive:' .. ARGV[2]) == 0
then
  redis.call('DEL', inflight, progress)
  redis.call('SREM', KEYS[1], ARGV[2])
end
redis.call('DEL', claim)
return 1
"""


def marker(fields: dict, *, test_mode: bool) -> str:
    """A request's marker: its event as recorded if it died now, as the fields of
    UsageEventData.to_json (the reaper adds the output tokens of the last checkpoint, the cost
    and the latency)."""
    return jsonfast.dumps({"t": int(test_mode), "e": fields}).decode()


def interrupted_event(raw: bytes | str, output_tokens: int, now: datetime) -> UsageEventData:
    data = json.loads(raw)
    event = UsageEventData.from_json(json.dumps(data["e"]))
    cost = event.cost
    if not data["t"] and (event.input_tokens or output_tokens):
        cost = cost_for(
            model=event.model, input_tokens=event.input_tokens, output_tokens=output_tokens
        )
    return replace(
        event,
        status_code=INTERRUPTED_STATUS,
        error_code=INTERRUPTED,
        billable=True,
        output_tokens=output_tokens,
        estimated=True,
        cost=cost,
        latency_ms=max(0, int((now - event.created_at).total_seconds() * 1000)),
    )


def _pairs(flat: list) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def usage_reap() -> int:
    """Close the requests of every dead serving process with one interrupted usage event each
    (module docstring). Returns how many events were handed to the database."""
    client = redis_client(socket_timeout=BACKGROUND_SOCKET_TIMEOUT)
    if client.info("server")["uptime_in_seconds"] < ttl_seconds():
        return 0
    token = secrets.token_hex(8)
    written = 0
    for process, flat_markers, flat_progress in client.eval(
        CLAIM, 1, PROCESSES_KEY, PREFIX, token, CLAIM_MS
    ):
        process = process.decode()
        markers, progress = _pairs(flat_markers), _pairs(flat_progress)
        now = timezone.now()
        events = []
        for request_id, raw in markers.items():
            try:
                events.append(interrupted_event(raw, int(progress.get(request_id) or 0), now))
            except (KeyError, TypeError, ValueError, ArithmeticError):
                logger.exception("in-flight marker %s of %s unreadable", request_id, process)
        written += usage_record(events=events)
        client.eval(FINISH, 1, PROCESSES_KEY, PREFIX, process, token, *markers)
        if markers:
            logger.warning(
                "process %s died with %d requests in flight: recorded as interrupted (%s)",
                process,
                len(markers),
                INTERRUPTED_STATUS,
            )
    return written
