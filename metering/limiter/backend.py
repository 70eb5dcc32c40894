"""The limiter's Redis script and pipelining, and the choice of backend for each call: one EVALSHA
of metering/lua/sliding_window.lua (a key's windows share one hash tag, `rl:{<key id>}:…`:
Cluster safe), sent with the loop's other commands (infra.redis_clients.submit); without
REDIS_URL, or while the breaker (infra/breaker.py) is open, the in-process fallback (local.py).

Invariant: a call carries the key's pending settlements and the counts it had in the process
during an outage; if Redis fails they go back where they came from, so nothing is lost.
"""

import asyncio
import hashlib
import logging
from pathlib import Path

import redis
from django.conf import settings

from infra.breaker import redis_breaker, reset_breakers
from infra.redis_clients import REDIS_ERRORS, apipelined, aredis_client, redis_client, submit
from metering.limiter.local import store
from metering.limiter.settlements import SETTLE_DELAY_SECONDS, merge, pending
from metering.limiter.windows import APPLY, SUFFIXES, Spec, Window, now_ms, redis_key

logger = logging.getLogger(__name__)

SCRIPT = (Path(__file__).parent.parent / "lua" / "sliding_window.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)

_flushes: set[asyncio.Task] = set()


def backend_status() -> dict:
    """Where this process counts rate limits, for /readyz and metrics."""
    breaker = redis_breaker()
    down = breaker.down_since
    return {
        "backend": "redis" if settings.REDIS_URL and down is None else "local",
        "redis_down_since": down.isoformat() if down else None,
        "fallbacks": breaker.fallbacks,
    }


def reset_state() -> None:
    """Forget the breaker's state and the in-process windows (tests)."""
    reset_breakers()
    store.clear()
    pending.clear()


def redis_up() -> bool:
    """Whether a call goes to Redis now (configured, breaker closed or retrying)."""
    return bool(settings.REDIS_URL) and redis_breaker().usable()


def _script_args(key_id, mode, requests, tokens, specs, now, handed) -> tuple[list[str], list]:
    if handed:
        specs = [
            (suffix, window_ms, limit, kind, adds + _handed_adds(handed, suffix, window_ms))
            for suffix, window_ms, limit, kind, adds in specs
        ]
    args: list = [now, mode, requests, tokens]
    for _, window_ms, limit, kind, adds in specs:
        args += [window_ms, limit, kind, len(adds)]
        for at_ms, delta in adds:
            args += [at_ms, delta]
    return [redis_key(key_id, spec[0]) for spec in specs], [",".join(map(str, args))]


def _handed_adds(handed: dict[str, Window], suffix: str, window_ms: int) -> list:
    win = handed.get(suffix)
    if win is None or win.window_ms != window_ms:
        return []
    return [(win.last(index), value) for index, value in win.buckets.items()]


def _take(key_id: str, mode: int, specs: list[Spec]):
    """What goes with this Redis call: the key's windows counted locally during an outage, and
    its pending settlements (the left-over ones stay pending)."""
    handed = store.take(key_id)
    waiting = pending.take(key_id)
    merged, rest = merge(specs, waiting, mode)
    if rest:
        pending.give_back(key_id, rest)
        waiting = {suffix: entry for suffix, entry in waiting.items() if suffix not in rest}
    return handed, waiting, merged


def _failed(key_id: str, handed, waiting, now: int, error: BaseException) -> None:
    if handed:
        store.give_back(key_id, handed, now)
    if waiting:
        pending.give_back(key_id, waiting)
    redis_breaker().failed(error)


def run(key_id, mode, requests, tokens, specs, now) -> tuple[str, list[int]]:
    """One call from sync code: (backend, the script's answer)."""
    if redis_up():
        handed, waiting, merged = _take(key_id, mode, specs)
        keys, args = _script_args(key_id, mode, requests, tokens, merged, now, handed)
        client = redis_client()
        try:
            try:
                result = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                client.script_load(SCRIPT)
                result = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except REDIS_ERRORS as error:
            _failed(key_id, handed, waiting, now, error)
        else:
            redis_breaker().succeeded()
            return "redis", [int(value) for value in result]
    return "local", run_local(key_id, mode, requests, tokens, specs, now)


class Started:
    """A call sent to Redis (pipelined), to finish with afinish."""

    __slots__ = ("args", "future", "handed", "key_id", "keys", "mode", "now", "rest", "waiting")

    def __init__(self, key_id, mode, rest, now, handed, waiting, keys, args, future) -> None:
        self.key_id, self.mode, self.rest, self.now = key_id, mode, rest, now
        self.handed, self.waiting, self.keys, self.args = handed, waiting, keys, args
        self.future = future


def astart(key_id, mode, requests, tokens, specs, now) -> "Started | tuple[str, list[int]]":
    """Send the call now (pipelined) and return it to finish; or its local result."""
    if redis_up():
        handed, waiting, merged = _take(key_id, mode, specs)
        keys, args = _script_args(key_id, mode, requests, tokens, merged, now, handed)
        # Pipelined with the loop's other commands: concurrent requests' calls share round
        # trips, and a request's per-IP check goes with its check here.
        future = submit("evalsha", SCRIPT_SHA, len(keys), *keys, *args)
        return Started(
            key_id, mode, (requests, tokens, specs), now, handed, waiting, keys, args, future
        )
    return "local", run_local(key_id, mode, requests, tokens, specs, now)


async def afinish(started: "Started | tuple[str, list[int]]") -> tuple[str, list[int]]:
    if not isinstance(started, Started):
        return started
    try:
        try:
            result = await asyncio.shield(started.future)
        except redis.exceptions.NoScriptError:
            await aredis_client().script_load(SCRIPT)
            keys, args = started.keys, started.args
            result = await apipelined("evalsha", SCRIPT_SHA, len(keys), *keys, *args)
    except REDIS_ERRORS as error:
        _failed(started.key_id, started.handed, started.waiting, started.now, error)
        requests, tokens, specs = started.rest
        return "local", run_local(
            started.key_id, started.mode, requests, tokens, specs, started.now
        )
    redis_breaker().succeeded()
    return "redis", [int(value) for value in result]


async def arun(key_id, mode, requests, tokens, specs, now) -> tuple[str, list[int]]:
    return await afinish(astart(key_id, mode, requests, tokens, specs, now))


def run_local(key_id, mode, requests, tokens, specs, now) -> list[int]:
    if settings.REDIS_URL:  # Redis is configured but did not answer
        redis_breaker().count_fallback()
        store.mark_handover(key_id)
    return store.run(key_id, mode, requests, tokens, specs, now)


# --- settlements waiting for the key's next call (settlements.py) ------------------------------


def schedule_flush(key_id: str) -> None:
    loop = asyncio.get_running_loop()

    def start() -> None:
        task = loop.create_task(_flush_pending(key_id))
        _flushes.add(task)
        task.add_done_callback(_flushes.discard)

    loop.call_later(SETTLE_DELAY_SECONDS, start)


async def _flush_pending(key_id: str) -> None:
    if key_id in pending.keys:
        try:
            await arun(key_id, APPLY, 0, 0, [], now_ms(None))
        except Exception:
            logger.exception("sending the pending settlements of key %s failed", key_id)


async def aflush_settlements() -> None:
    """Send every pending settlement now (tests, shutdown)."""
    for key_id in list(pending.keys):
        await _flush_pending(key_id)


def delete(key_ids) -> None:
    """Delete these keys' windows in Redis: one DEL per key id (each is its own Cluster slot).
    Raises redis.RedisError if Redis cannot be reached: the counts there remain."""
    suffixes = sorted(set(SUFFIXES.values()))
    pipe = redis_client().pipeline(transaction=False)
    for key_id in key_ids:
        pipe.delete(*(redis_key(key_id, suffix) for suffix in suffixes))
    try:
        pipe.execute()
    except REDIS_ERRORS as error:
        redis_breaker().failed(error)
        raise
