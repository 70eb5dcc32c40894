"""Usage events, the stream's side: `usage_drain` moves the Redis stream into the table through
usage_record. metering/usage/__init__.py explains the pipeline."""

import logging
import os
import socket
import time

import redis
from django.db import DataError, IntegrityError

from infra import metrics
from infra.redis_clients import BACKGROUND_SOCKET_TIMEOUT, redis_client
from metering.usage.events import ENTRY_FIELD, UsageEventData, dead_letter_key, stream_key
from metering.usage.record import usage_record

logger = logging.getLogger(__name__)

GROUP = "usage-writers"
# An entry read but not acked for this long belongs to a drainer that died: take it over. A
# batch takes milliseconds, so a live drainer is never robbed (and if it were, the unique
# request_id would make the double write harmless); a crash delays its batch by about this much.
RECLAIM_IDLE_MS = 60_000
# Consumers with nothing pending and idle this long (dead processes) are removed from the group.
CONSUMER_PRUNE_IDLE_MS = 3_600_000
CONSUMER_PRUNE_EVERY = 600.0
MAX_BATCHES = 200

_last_prune = 0.0


def _consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _ensure_group(client, key: str) -> None:
    try:
        client.xgroup_create(key, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):  # the group exists: the usual case
            raise


def _prune_consumers(client, key: str) -> None:
    """Dead drainers leave their consumer names in the group; drop the empty, long-idle ones."""
    global _last_prune
    now = time.monotonic()
    if now - _last_prune < CONSUMER_PRUNE_EVERY:
        return
    _last_prune = now
    for consumer in client.xinfo_consumers(key, GROUP):
        if consumer["pending"] == 0 and consumer["idle"] > CONSUMER_PRUNE_IDLE_MS:
            client.xgroup_delconsumer(key, GROUP, consumer["name"])


def _store(decoded: list[tuple[bytes, UsageEventData]]) -> tuple[int, list[tuple[bytes, str]]]:
    """Write the batch: (events stored or already there, refused entries). If one event makes
    the batch fail, write them one by one and return the ones the database refuses (entry id,
    reason), so they go to the dead-letter stream instead of blocking every later batch.
    Connection errors propagate: nothing is acked, the batch is retried."""
    events = [event for _, event in decoded]
    try:
        return usage_record(events=events), []
    except (DataError, IntegrityError, ValueError):
        logger.exception("usage batch refused by the database; retrying event by event")
    stored, refused = 0, []
    for entry_id, event in decoded:
        try:
            stored += usage_record(events=[event])
        except (DataError, IntegrityError, ValueError) as error:
            refused.append((entry_id, f"{type(error).__name__}: {error}"))
    return stored, refused


def _process(client, key: str, entries: list) -> int:
    """Store a batch of stream entries, then ack and delete them (in that order)."""
    ids: list[bytes] = []
    decoded: list[tuple[bytes, UsageEventData]] = []
    dead: list[tuple[bytes, dict, str]] = []
    for entry_id, fields in entries:
        ids.append(entry_id)
        if not fields:  # deleted while pending (Redis < 7 reports these as empty entries)
            continue
        try:
            decoded.append((entry_id, UsageEventData.from_json(fields[ENTRY_FIELD.encode()])))
        except (KeyError, ValueError, TypeError, ArithmeticError) as error:
            dead.append((entry_id, fields, f"undecodable: {error}"))
    if not ids:
        return 0
    payloads = {entry_id: fields for entry_id, fields in entries if fields}
    stored, refused = _store(decoded)
    for entry_id, reason in refused:
        dead.append((entry_id, payloads[entry_id], reason))
    # The rows are committed (usage_record is atomic): only now may the entries go.
    pipe = client.pipeline(transaction=True)
    for entry_id, fields, reason in dead:
        logger.error("usage stream entry %s moved to the dead-letter stream: %s", entry_id, reason)
        pipe.xadd(
            dead_letter_key(key),
            {**fields, "entry_id": entry_id, "reason": reason},
        )
    pipe.xack(key, GROUP, *ids)
    pipe.xdel(key, *ids)
    pipe.execute()
    _observe_lag(ids)
    return stored


def _observe_lag(ids: list) -> None:
    """Each event's lag from its emission (its stream entry id is the XADD's time in ms) to its
    commit, just done."""
    now_ms = time.time() * 1000
    for entry_id in ids:
        emitted = entry_id.split(b"-", 1)[0] if isinstance(entry_id, bytes) else entry_id
        metrics.USAGE_LAG.observe(max(0.0, (now_ms - int(emitted)) / 1000))


def usage_drain(
    *,
    batch_size: int = 500,
    reclaim_idle_ms: int = RECLAIM_IDLE_MS,
    max_batches: int = MAX_BATCHES,
) -> int:
    """Move usage events from the Redis stream into the database; return how many events are
    now stored (written, or found already written by an earlier, interrupted run).

    Reads with the consumer group GROUP, so concurrent drainers share the work. First takes over
    entries another drainer read and never acked for reclaim_idle_ms (it died mid-batch), then
    reads new entries, batch_size at a time, until a read finds fewer than batch_size (what was
    in the stream when the run began is stored) or max_batches were done (the next run
    continues). Each batch: INSERT ... ON CONFLICT (request_id) DO NOTHING and
    commit, then XACK + XDEL. A crash between the two replays the batch: harmless.
    Must not run inside a transaction: the ack has to follow a real commit.
    """
    client = redis_client(socket_timeout=BACKGROUND_SOCKET_TIMEOUT)
    key = stream_key()
    _ensure_group(client, key)
    consumer = _consumer_name()
    stored = 0
    cursor = "0-0"
    for _ in range(max_batches):
        cursor, entries, *_ = client.xautoclaim(
            key, GROUP, consumer, min_idle_time=reclaim_idle_ms, start_id=cursor, count=batch_size
        )
        if entries:
            logger.warning("reclaimed %d usage events left pending by a drainer", len(entries))
            stored += _process(client, key, entries)
        if cursor in (b"0-0", "0-0"):
            break
    for _ in range(max_batches):
        response = client.xreadgroup(GROUP, consumer, {key: ">"}, count=batch_size)
        entries = response[0][1] if response else []
        if not entries:
            break
        stored += _process(client, key, entries)
        if len(entries) < batch_size:
            # The stream was empty after these: what arrives meanwhile waits for the next run
            # (2 s), in one batch, rather than in a trickle of small ones each paying a whole
            # transaction (a drain that chases a busy stream costs several times more CPU).
            break
    _prune_consumers(client, key)
    return stored
