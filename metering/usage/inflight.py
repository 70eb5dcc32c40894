"""The in-flight registry: a serving process keeps in Redis a marker per admitted request and
the output tokens of its streams at the last checkpoint, so that when the process dies (kill
-9, OOM) a survivor closes each of its requests with one `interrupted` usage event
(metering/usage/reaper.py). Started by the gateway's lifespan, on servers with REDIS_URL.

Keys per process P, in the `{usage}` slot: `inflight:P`, `progress:P`, `alive:P` and the set
`processes`. Invariants: a marker goes with its request's own event, atomically (one Lua
script), or once that event is committed; no request waits for the registry (its writes are
pipelined, not awaited; failed ones retried, bounded, by the heartbeat). Details:
docs/usage-events.md.
"""

import asyncio
import hashlib
import logging
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable

from django.conf import settings

from infra.loops import PerLoop
from infra.redis_clients import submit
from metering.usage.events import stream_enabled

logger = logging.getLogger(__name__)

PREFIX = "aibaas:{usage}:"
PROCESSES_KEY = PREFIX + "processes"
HEARTBEAT_SECONDS = 1.0
MAX_PENDING = 100_000  # failed writes kept for the heartbeat; past it the oldest go (logged)

# The event and the marker's end, together: a marker exists only while its event does not.
# KEYS: the stream, then the hashes the request is in (inflight; progress too for a stream).
# Sent by its SHA (EVALSHA): Redis does not hash the script again for every request.
EMIT = """
redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
for i = 2, #KEYS do
  redis.call('HDEL', KEYS[i], ARGV[3])
end
return 1
"""
EMIT_SHA = hashlib.sha1(EMIT.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)
# SADD answers 1 when this process was not registered: first beat, reaped while cut off, or a
# Redis that lost its data. The heartbeat then writes every marker again.
BEAT = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return redis.call('SADD', KEYS[1], ARGV[1])
"""


def ttl_seconds() -> float:
    """How long after its last heartbeat a process is taken for dead."""
    return settings.USAGE_INFLIGHT_TTL_SECONDS


def keys_of(process: str) -> tuple[str, ...]:
    """(inflight, progress, alive) keys of a process."""
    return tuple(PREFIX + kind + ":" + process for kind in ("inflight", "progress", "alive"))


class _Entry:
    __slots__ = ("marker", "saved", "usage")

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.usage = None  # a stream's StreamUsage: checkpointed by the heartbeat
        self.saved = 0  # output tokens at the last checkpoint sent


class Registry:
    """The registry of one event loop (a serving process runs one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reap: Callable[[], object] | None = None  # run after each beat (see _reap)
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.inflight, self.progress, self.alive = keys_of(self.process)
        self.active: dict[str, _Entry] = {}
        self.pending: OrderedDict[str, bool] = OrderedDict()  # request id → marker still wanted
        self.heartbeat: asyncio.Task | None = None
        self.reaping: asyncio.Future | None = None

    # --- the request path: no awaits ------------------------------------------------------

    def admitted(self, request_id: str, marker: str) -> None:
        self.active[request_id] = _Entry(marker)
        self._send(request_id, submit("hset", self.inflight, request_id, marker))

    def streaming(self, request_id: str, usage) -> None:
        entry = self.active.get(request_id)
        if entry is not None:
            entry.usage = usage

    def ending(self, request_id: str) -> tuple[str, ...]:
        """The request's event is being emitted: no more checkpoints. The hashes its marker is
        in (none: it had no marker; the progress hash only for a stream)."""
        entry = self.active.pop(request_id, None)
        if entry is None:
            return ()
        return (self.inflight,) if entry.usage is None else (self.inflight, self.progress)

    @staticmethod
    def emit_args(stream: str, hashes: tuple[str, ...], field: str, payload: str, request_id):
        """EVALSHA's arguments of EMIT for this event and the hashes `ending` named."""
        return (EMIT_SHA, 1 + len(hashes), stream, *hashes, field, payload, request_id)

    def forget(self, request_id: str) -> None:
        """Remove the marker of a request whose event was written to the database directly."""
        self.pending.pop(request_id, None)
        self._send(request_id, submit("hdel", self.inflight, request_id))
        submit("hdel", self.progress, request_id)

    def _send(self, request_ids, future: asyncio.Future) -> None:
        """Retry the writes of these request ids (one, or a list) if this command fails."""

        def done(sent: asyncio.Future) -> None:
            if sent.cancelled() or sent.exception() is not None:
                for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
                    self._retry_later(request_id)

        future.add_done_callback(done)

    def _retry_later(self, request_id: str) -> None:
        self.pending[request_id] = True
        self.pending.move_to_end(request_id)
        if len(self.pending) > MAX_PENDING:
            dropped, _ = self.pending.popitem(last=False)
            logger.error("in-flight registry: write of %s dropped (Redis down too long)", dropped)

    # --- the heartbeat -----------------------------------------------------------------------

    async def start(self) -> None:
        """Register (one beat, before the process serves: a process killed right after its
        first request is known), then beat every HEARTBEAT_SECONDS."""
        if self.heartbeat is None:
            first = self.loop.create_future()
            self.heartbeat = self.loop.create_task(self._beat_forever(first))
            await asyncio.wait([first], timeout=2 * HEARTBEAT_SECONDS)

    async def _beat_forever(self, first: asyncio.Future) -> None:
        while True:
            try:
                await self.beat()
            except Exception as error:  # Redis unreachable: the next beat retries everything
                logger.warning("in-flight registry heartbeat failed: %s", error)
            if not first.done():
                first.set_result(None)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def beat(self) -> None:
        """Say alive, write the checkpoints that moved, retry the writes that failed; the whole
        registry again if Redis forgot this process. Then reap, if this process is a reaper."""
        ttl_ms = int(ttl_seconds() * 1000)
        new = submit("eval", BEAT, 2, PROCESSES_KEY, self.alive, self.process, ttl_ms)
        checkpoints = self._checkpoints(everything=False)
        retries = list(self.pending)
        self.pending.clear()
        for request_id in retries:  # each retried again if it fails again
            entry = self.active.get(request_id)
            if entry is not None:
                self._send(request_id, submit("hset", self.inflight, request_id, entry.marker))
            else:
                self._send(request_id, submit("hdel", self.inflight, request_id))
                submit("hdel", self.progress, request_id)
        if checkpoints:
            done = submit("hset", self.progress, mapping=checkpoints)
        try:
            if await asyncio.shield(new):
                markers = {rid: entry.marker for rid, entry in self.active.items()}
                if markers:
                    self._send(list(markers), submit("hset", self.inflight, mapping=markers))
                progress = self._checkpoints(everything=True)
                if progress:
                    submit("hset", self.progress, mapping=progress)
            if checkpoints:
                await asyncio.shield(done)
        except Exception:
            for request_id in checkpoints:
                entry = self.active.get(request_id)
                if entry is not None:
                    entry.saved = -1  # sent again by the next beat
            raise
        self._reap()

    def _checkpoints(self, *, everything: bool) -> dict[str, int]:
        out = {}
        for request_id, entry in self.active.items():
            if entry.usage is None:
                continue
            tokens = max(entry.usage.usage.output_tokens, entry.usage.produced)
            if everything or tokens != entry.saved:
                out[request_id] = entry.saved = tokens
        return out

    def _reap(self) -> None:
        """Without a Celery broker nothing else runs the reaper (`reap`, given to `start`): this
        process does, after each beat, in a thread, one run at a time."""
        if self.reap is None or stream_enabled():
            return
        if self.reaping is not None and not self.reaping.done():
            return
        self.reaping = self.loop.run_in_executor(None, _reap_in_thread, self.reap)

    async def stop(self) -> None:
        """Shutdown: stop beating; with nothing in flight, the registry goes (else the reaper
        closes what is left once the alive key expires)."""
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            self.heartbeat = None
        if self.active:
            return
        try:
            await asyncio.shield(submit("delete", self.inflight, self.progress, self.alive))
            await asyncio.shield(submit("srem", PROCESSES_KEY, self.process))
        except Exception as error:
            logger.warning("in-flight registry not removed at shutdown: %s", error)


def _reap_in_thread(reap) -> None:
    from django.db import connection

    try:
        reap()
    except Exception:
        logger.exception("usage reaper failed")
    finally:
        connection.close()


_registries: PerLoop[Registry] = PerLoop(Registry)


async def start(*, reap: Callable[[], object] | None = None) -> None:
    """Start this event loop's registry and heartbeat (the gateway's lifespan). `reap`: the
    reaper this process runs after each beat when there is no broker (metering.usage.start)."""
    if settings.REDIS_URL:
        registry = _registries.get()
        registry.reap = reap
        await registry.start()


def current() -> Registry | None:
    """This event loop's registry, if started (None: no registry, nothing to do)."""
    registry = _registries.current()
    return registry if registry is not None and registry.heartbeat is not None else None


async def stop() -> None:
    registry = _registries.pop()
    if registry is not None:
        await registry.stop()
