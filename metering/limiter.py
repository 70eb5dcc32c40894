"""The per-key rate limiter: exact sliding windows, one atomic Redis round trip per request.

Windows per API key (never per user): requests/min, requests/day, tokens/min, tokens/day and
the optional burst windows; `limits_for` turns a key's limits into `Limit`s (None: no window).
Invariants: in no span of a window's length is more than its limit admitted; every window is
checked before any is counted, so a refused request counts nowhere; settling moves the token
windows from the estimate to the tokens used. A key's windows share one hash tag
(`rl:{<key id>}:…`): one EVALSHA of metering/lua/sliding_window.lua, Cluster safe, on the
caller's clock. Without REDIS_URL, or while Redis fails, the same arithmetic runs in the
process (logged, counted) and its counts join Redis when it answers again.
The algorithm, its memory figures and the alternatives considered: docs/limiter.md.
"""

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings

from infra.breaker import redis_breaker, reset_breakers
from infra.redis_clients import REDIS_ERRORS, apipelined, aredis_client, redis_client, submit

logger = logging.getLogger(__name__)

BUCKETS = 60
SPAN = BUCKETS + 2  # as in the script: live buckets never reach further past the oldest
MINUTE_MS = 60_000
DAY_MS = 86_400_000
LOCAL_MAX_KEYS = 100_000

SCRIPT = (Path(__file__).parent / "lua" / "sliding_window.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)

_CHECK, _PEEK, _APPLY = 1, 2, 3
_KINDS = {"requests": 0, "tokens": 1}
# name -> (kind, key suffix); the per-minute and per-day windows in limits_for's order.
_WINDOWS = {
    "requests_per_minute": ("requests", "rpm"),
    "requests_per_day": ("requests", "rpd"),
    "tokens_per_minute": ("tokens", "tpm"),
    "tokens_per_day": ("tokens", "tpd"),
}
_BURSTS = {"requests": ("burst_requests", "brq"), "tokens": ("burst_tokens", "btk")}
_SUFFIXES = {name: suffix for name, (_, suffix) in _WINDOWS.items()} | dict(_BURSTS.values())
_WINDOW_MS = {"requests_per_minute": MINUTE_MS, "requests_per_day": DAY_MS}
_WINDOW_MS |= {"tokens_per_minute": MINUTE_MS, "tokens_per_day": DAY_MS}


@dataclass(frozen=True, slots=True)
class Limit:
    name: str  # a key of _WINDOWS, or "burst_requests" / "burst_tokens"
    kind: str  # "requests" | "tokens"
    window_ms: int
    limit: int


@dataclass(slots=True)
class WindowState:
    limit: Limit
    used: int  # in the window after this request (if admitted), or now (refused, peek)
    remaining: int
    reset_ms: int  # until the oldest counted bucket ages out; 0 when the window is empty


@dataclass(slots=True)
class Decision:
    allowed: bool
    windows: list[WindowState]  # in the order of the limits passed
    refused_by: Limit | None  # of the refusing windows, the one that frees up last
    retry_after_ms: int  # 0 when allowed; whole seconds, rounded up, are the caller's
    backend: str  # "redis" or "local"
    at_ms: int  # the now_ms used: settle with it


_LIMIT_NAMES = (*_WINDOWS, "burst_percent", "burst_seconds")
_limits_cache: dict[tuple, list[Limit]] = {}


def limits_for(limits: dict) -> list[Limit]:
    """The windows of a KeyContext.limits dict (keys/verification.py): None = unlimited. With a
    burst percent, the per-minute limits are raised and burst windows added (module docstring;
    a burst window of 60 s or more would add nothing to the raised minute limit). The list is
    shared by every key with the same limits: do not change it."""
    signature = tuple(map(limits.get, _LIMIT_NAMES))
    windows = _limits_cache.get(signature)
    if windows is None:
        if len(_limits_cache) > 10_000:
            _limits_cache.clear()
        windows = _limits_cache[signature] = _limits_for(limits)
    return windows


def _limits_for(limits: dict) -> list[Limit]:
    percent = int(limits.get("burst_percent") or 0)
    seconds = int(limits.get("burst_seconds") or 10)
    windows: list[Limit] = []
    bursts: list[Limit] = []
    for name, (kind, _) in _WINDOWS.items():
        value = limits.get(name)
        if value is None:
            continue
        value = int(value)
        if percent > 0 and _WINDOW_MS[name] == MINUTE_MS:
            if 0 < seconds < 60:
                burst = -(-value * (100 + percent) * seconds // 6000)  # ceil, in integers
                bursts.append(Limit(_BURSTS[kind][0], kind, seconds * 1000, burst))
            value = -(-value * (100 + percent) // 100)
        windows.append(Limit(name, kind, _WINDOW_MS[name], value))
    return windows + bursts


def _now(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else int(now_ms)


def _width(window_ms: int) -> int:
    return -(-window_ms // BUCKETS)


def _key(key_id: str, suffix: str) -> str:
    return f"rl:{{{key_id}}}:{suffix}"


# A call, as both backends take it: mode, requests, tokens, and per window
# (suffix, window_ms, limit, kind, [(at_ms, delta), ...]). Both answer the script's list:
# [allowed, refusing window (1-based, 0 none), retry_after_ms, used_1, reset_1, ...].
_Spec = tuple[str, int, int, int, list[tuple[int, int]]]


def _specs(limits: list[Limit], adds: dict[str, int] | None = None, at: int = 0) -> list[_Spec]:
    specs = []
    for lim in limits:
        delta = (adds or {}).get(lim.kind, 0)
        specs.append(
            (
                _SUFFIXES.get(lim.name, lim.name),
                lim.window_ms,
                lim.limit,
                _KINDS[lim.kind],
                [(at, delta)] if delta else [],
            )
        )
    return specs


# --- the in-process backend: the script's arithmetic in Python --------------------------------


class _Window:
    __slots__ = ("buckets", "dirty", "lasts", "oldest", "total", "width", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.width = _width(window_ms)
        self.buckets: dict[int, int] = {}
        self.lasts: dict[int, int] = {}  # bucket -> its latest admission (ms)
        self.total = 0
        self.oldest: int | None = None
        self.dirty = False

    def clear(self) -> None:
        self.buckets.clear()
        self.lasts.clear()
        self.total, self.oldest, self.dirty = 0, None, False

    def last(self, index: int) -> int:
        return self.lasts.get(index, (index + 1) * self.width - 1)

    def drop(self, index: int) -> int:
        self.lasts.pop(index, None)
        return self.buckets.pop(index, 0)

    def advance(self, cutoff: int) -> None:
        if self.total <= 0:
            self.clear()
            return
        while self.buckets.get(self.oldest, 0) <= 0:
            self.drop(self.oldest)
            self.oldest += 1
            self.dirty = True
            if self.oldest > cutoff + SPAN:
                self.clear()
                return

    def prune(self, now: int) -> int:
        """Drop what aged out by `now`; the cutoff (oldest bucket still counted)."""
        cutoff = (now - self.window_ms) // self.width
        if self.oldest is None or self.total <= 0 or cutoff - self.oldest > SPAN:
            self.clear()
            return cutoff
        if self.oldest < cutoff:  # else the oldest bucket is non-empty, as after every call
            while self.oldest < cutoff:
                self.total -= self.drop(self.oldest)
                self.oldest += 1
            self.dirty = True
            self.advance(cutoff)
        # The cutoff bucket straddles now - window: it leaves with its latest admission.
        if self.total > 0 and self.oldest == cutoff and self.last(cutoff) <= now - self.window_ms:
            self.total -= self.drop(cutoff)
            self.oldest += 1
            self.dirty = True
            self.advance(cutoff)
        return cutoff

    def add(self, cutoff: int, at_ms: int, delta: int, now: int) -> None:
        index = at_ms // self.width
        aged = index == cutoff and self.oldest != cutoff and at_ms <= now - self.window_ms
        if delta == 0 or index < cutoff or aged:
            return
        old = self.buckets.get(index, 0)
        new = max(0, old + delta)
        if new == old:
            return
        if new:
            self.buckets[index] = new
            if delta > 0 and (old == 0 or at_ms > self.last(index)):
                self.lasts[index] = at_ms
        else:
            self.drop(index)
        self.total += new - old
        if new > 0 and (self.oldest is None or index < self.oldest):
            self.oldest = index
        self.dirty = True
        self.advance(cutoff)

    def retry_after(self, now: int, cutoff: int, amount: int, limit: int) -> int:
        if amount > limit:
            return self.window_ms
        need, freed = self.total + amount - limit, 0
        for index in range(self.oldest, cutoff + SPAN + 1):
            freed += self.buckets.get(index, 0)
            if freed >= need:
                return self.last(index) + self.window_ms - now
        return self.window_ms


class _Local:
    """Windows per key id, least recently used first; idle keys are dropped as time passes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: OrderedDict[str, tuple[int, dict[str, _Window]]] = OrderedDict()
        # Keys counted here while Redis was configured but unreachable: handed back to Redis.
        self.handover: set[str] = set()

    def run(
        self, key_id: str, mode: int, requests: int, tokens: int, specs: list[_Spec], now: int
    ) -> list[int]:
        with self.lock:
            expires, windows = self.keys.pop(key_id, (0, {}))
            states = []
            for suffix, window_ms, limit, kind, adds in specs:
                win = windows.get(suffix)
                if win is None or win.window_ms != window_ms:
                    win = windows[suffix] = _Window(window_ms)
                win.dirty = False
                cutoff = win.prune(now)
                for at_ms, delta in adds:
                    win.add(cutoff, at_ms, delta, now)
                states.append((win, cutoff, limit, requests if kind == 0 else tokens))
            allowed = all(win.total + amount <= limit for win, _, limit, amount in states)
            refused = retry = 0
            if mode == _CHECK and allowed:
                for win, _, _, amount in states:
                    if amount > 0:
                        index = now // win.width
                        win.buckets[index] = win.buckets.get(index, 0) + amount
                        win.lasts[index] = now
                        win.total += amount
                        if win.oldest is None or index < win.oldest:
                            win.oldest = index
                        win.dirty = True
            elif mode == _CHECK:
                for i, (win, cutoff, limit, amount) in enumerate(states, 1):
                    if win.total + amount > limit:
                        wait = win.retry_after(now, cutoff, amount, limit)
                        if wait > retry:
                            refused, retry = i, wait
            result = [int(allowed), refused, retry]
            for win, _, _, _ in states:
                if win.dirty:
                    expires = max(expires, now + win.window_ms + win.width)
                result.append(win.total)
                result.append(win.last(win.oldest) + win.window_ms - now if win.total > 0 else 0)
            windows = {suffix: win for suffix, win in windows.items() if win.total > 0}
            if windows:
                self.keys[key_id] = (expires, windows)
            self._sweep(now)
            return result

    def _sweep(self, now: int) -> None:
        keys = self.keys
        while keys and (len(keys) > LOCAL_MAX_KEYS or next(iter(keys.values()))[0] <= now):
            key_id, _ = keys.popitem(last=False)
            self.handover.discard(key_id)

    def take(self, key_id: str) -> dict[str, _Window] | None:
        """This key's windows counted during an outage, to hand over to Redis."""
        if key_id not in self.handover:  # the usual case, without the lock
            return None
        with self.lock:
            if key_id not in self.handover:
                return None
            self.handover.discard(key_id)
            entry = self.keys.pop(key_id, None)
            return entry[1] if entry else None

    def give_back(self, key_id: str, windows: dict[str, _Window], now: int) -> None:
        """Redis failed again: the handed-over counts stay here, with what came meanwhile."""
        with self.lock:
            expires, current = self.keys.pop(key_id, (0, {}))
            for suffix, win in windows.items():
                mine = current.get(suffix)
                if mine is None or mine.window_ms != win.window_ms:
                    current[suffix] = win
                    continue
                cutoff = mine.prune(now)
                for index, value in win.buckets.items():
                    mine.add(cutoff, win.last(index), value, now)
            self.keys[key_id] = (max(expires, now + DAY_MS), current)
            self.handover.add(key_id)

    def forget(self, key_ids) -> None:
        with self.lock:
            for key_id in key_ids:
                self.keys.pop(key_id, None)
                self.handover.discard(key_id)

    def clear(self) -> None:
        with self.lock:
            self.keys.clear()
            self.handover.clear()


_local = _Local()


# --- settlements waiting for the key's next call -----------------------------------------------


class _Pending:
    """Settlements made on the asyncio path while Redis answers are not sent on their own: they
    go with the key's next call (the script applies them before it checks), or after
    SETTLE_DELAY_SECONDS when no call comes. Under load a settlement costs no command at all.
    Per key: suffix -> [window_ms, limit, kind, [(at_ms, delta), ...]]. Process-wide (the sync
    path takes them too)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, dict[str, list]] = {}

    def add(self, key_id: str, specs: list[_Spec]) -> bool:
        """True when the key had nothing pending (its flush is to be scheduled)."""
        with self.lock:
            windows = self.keys.get(key_id)
            new = windows is None
            if new:
                windows = self.keys[key_id] = {}
            for suffix, window_ms, limit, kind, adds in specs:
                entry = windows.get(suffix)
                if entry is None or entry[0] != window_ms:
                    windows[suffix] = [window_ms, limit, kind, list(adds)]
                else:
                    entry[3].extend(adds)
            return new

    def take(self, key_id: str) -> dict[str, list] | None:
        if key_id not in self.keys:  # the usual case at low load, without the lock
            return None
        with self.lock:
            return self.keys.pop(key_id, None)

    def give_back(self, key_id: str, windows: dict[str, list]) -> None:
        with self.lock:
            mine = self.keys.setdefault(key_id, {})
            for suffix, (window_ms, limit, kind, adds) in windows.items():
                entry = mine.get(suffix)
                if entry is None or entry[0] != window_ms:
                    mine[suffix] = [window_ms, limit, kind, list(adds)]
                else:
                    entry[3][:0] = adds

    def forget(self, key_ids) -> None:
        with self.lock:
            for key_id in key_ids:
                self.keys.pop(key_id, None)

    def clear(self) -> None:
        with self.lock:
            self.keys.clear()


_pending = _Pending()
SETTLE_DELAY_SECONDS = 0.1
_flushes: set[asyncio.Task] = set()


def _merge(specs: list[_Spec], pending: dict[str, list] | None, mode: int):
    """The call's specs with the key's pending settlements added; (specs, left over). An APPLY
    call takes every pending window; a check or peek only those it has (its result must match
    its limits), the others stay pending."""
    if not pending:
        return specs, None
    merged = []
    used = set()
    for suffix, window_ms, limit, kind, adds in specs:
        entry = pending.get(suffix)
        if entry is not None and entry[0] == window_ms:
            adds = adds + entry[3]
            used.add(suffix)
        merged.append((suffix, window_ms, limit, kind, adds))
    rest = {suffix: entry for suffix, entry in pending.items() if suffix not in used}
    if mode == _APPLY:
        merged += [(suffix, *entry) for suffix, entry in rest.items()]
        rest = {}
    return merged, rest or None


def _schedule_flush(key_id: str) -> None:
    loop = asyncio.get_running_loop()

    def start() -> None:
        task = loop.create_task(_flush_pending(key_id))
        _flushes.add(task)
        task.add_done_callback(_flushes.discard)

    loop.call_later(SETTLE_DELAY_SECONDS, start)


async def _flush_pending(key_id: str) -> None:
    if key_id in _pending.keys:
        try:
            await _arun(key_id, _APPLY, 0, 0, [], _now(None))
        except Exception:
            logger.exception("sending the pending settlements of key %s failed", key_id)


async def aflush_settlements() -> None:
    """Send every pending settlement now (tests, shutdown)."""
    for key_id in list(_pending.keys):
        await _flush_pending(key_id)


# --- the breaker (infra/breaker.py): Redis or this process -----------------------------------


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
    _local.clear()
    _pending.clear()


# --- one call, on Redis or in the process ----------------------------------------------------


def _redis_call(key_id, mode, requests, tokens, specs, now, handed) -> tuple[list[str], list]:
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
    return [_key(key_id, spec[0]) for spec in specs], [",".join(map(str, args))]


def _handed_adds(handed: dict[str, _Window], suffix: str, window_ms: int) -> list:
    win = handed.get(suffix)
    if win is None or win.window_ms != window_ms:
        return []
    return [(win.last(index), value) for index, value in win.buckets.items()]


def _take(key_id: str, mode: int, specs: list[_Spec]):
    """What goes with this Redis call: the key's windows counted locally during an outage, and
    its pending settlements (the left-over ones stay pending)."""
    handed = _local.take(key_id)
    pending = _pending.take(key_id)
    merged, rest = _merge(specs, pending, mode)
    if rest:
        _pending.give_back(key_id, rest)
        pending = {suffix: entry for suffix, entry in pending.items() if suffix not in rest}
    return handed, pending, merged


def _failed(key_id: str, handed, pending, now: int, error: BaseException) -> None:
    if handed:
        _local.give_back(key_id, handed, now)
    if pending:
        _pending.give_back(key_id, pending)
    redis_breaker().failed(error)


def _run(key_id, mode, requests, tokens, specs, now) -> tuple[str, list[int]]:
    if settings.REDIS_URL and redis_breaker().usable():
        handed, pending, merged = _take(key_id, mode, specs)
        keys, args = _redis_call(key_id, mode, requests, tokens, merged, now, handed)
        client = redis_client()
        try:
            try:
                result = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                client.script_load(SCRIPT)
                result = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except REDIS_ERRORS as error:
            _failed(key_id, handed, pending, now, error)
        else:
            redis_breaker().succeeded()
            return "redis", [int(value) for value in result]
    return "local", _run_local(key_id, mode, requests, tokens, specs, now)


class _Started:
    """A call sent to Redis (pipelined), to finish with _afinish."""

    __slots__ = ("args", "future", "handed", "key_id", "keys", "mode", "now", "pending", "rest")

    def __init__(self, key_id, mode, rest, now, handed, pending, keys, args, future) -> None:
        self.key_id, self.mode, self.rest, self.now = key_id, mode, rest, now
        self.handed, self.pending, self.keys, self.args = handed, pending, keys, args
        self.future = future


def _astart(key_id, mode, requests, tokens, specs, now) -> "_Started | tuple[str, list[int]]":
    """Send the call now (pipelined) and return it to finish; or its local result."""
    if settings.REDIS_URL and redis_breaker().usable():
        handed, pending, merged = _take(key_id, mode, specs)
        keys, args = _redis_call(key_id, mode, requests, tokens, merged, now, handed)
        # Pipelined with the loop's other commands: concurrent requests' calls share round
        # trips, and a request's per-IP check goes with its check here.
        future = submit("evalsha", SCRIPT_SHA, len(keys), *keys, *args)
        return _Started(
            key_id, mode, (requests, tokens, specs), now, handed, pending, keys, args, future
        )
    return "local", _run_local(key_id, mode, requests, tokens, specs, now)


async def _afinish(started: "_Started | tuple[str, list[int]]") -> tuple[str, list[int]]:
    if not isinstance(started, _Started):
        return started
    try:
        try:
            result = await asyncio.shield(started.future)
        except redis.exceptions.NoScriptError:
            await aredis_client().script_load(SCRIPT)
            keys, args = started.keys, started.args
            result = await apipelined("evalsha", SCRIPT_SHA, len(keys), *keys, *args)
    except REDIS_ERRORS as error:
        _failed(started.key_id, started.handed, started.pending, started.now, error)
        requests, tokens, specs = started.rest
        return "local", _run_local(
            started.key_id, started.mode, requests, tokens, specs, started.now
        )
    redis_breaker().succeeded()
    return "redis", [int(value) for value in result]


async def _arun(key_id, mode, requests, tokens, specs, now) -> tuple[str, list[int]]:
    return await _afinish(_astart(key_id, mode, requests, tokens, specs, now))


def _run_local(key_id, mode, requests, tokens, specs, now) -> list[int]:
    if settings.REDIS_URL:  # Redis is configured but did not answer
        redis_breaker().count_fallback()
        with _local.lock:
            _local.handover.add(key_id)
    return _local.run(key_id, mode, requests, tokens, specs, now)


def _states(limits: list[Limit], result: list[int]) -> list[WindowState]:
    return [
        WindowState(
            limit=lim,
            used=result[3 + 2 * i],
            remaining=max(0, lim.limit - result[3 + 2 * i]),
            reset_ms=result[4 + 2 * i],
        )
        for i, lim in enumerate(limits)
    ]


def _decision(limits: list[Limit], backend: str, result: list[int], now: int) -> Decision:
    allowed = bool(result[0])
    return Decision(
        allowed=allowed,
        windows=_states(limits, result),
        refused_by=None if allowed else limits[result[1] - 1],
        retry_after_ms=0 if allowed else result[2],
        backend=backend,
        at_ms=now,
    )


def _check_args(limits, requests, tokens, now_ms):
    if requests < 0 or tokens < 0:
        raise ValueError("requests and tokens cannot be negative")
    return _CHECK, requests, tokens, _specs(limits), _now(now_ms)


def _no_limits(now_ms: int | None) -> Decision:
    backend = backend_status()["backend"]
    return Decision(True, [], None, 0, backend, _now(now_ms))


# --- the public calls -------------------------------------------------------------------------


class CheckStarted:
    """A check sent, not yet answered (check_start / check_finish)."""

    __slots__ = ("call", "decision", "limits", "now")

    def __init__(self, limits, now, call=None, decision=None) -> None:
        self.limits, self.now, self.call, self.decision = limits, now, call, decision


def check_start(
    key_id: str,
    limits: list[Limit],
    *,
    requests: int = 1,
    tokens: int = 0,
    now_ms: int | None = None,
) -> CheckStarted:
    """Admit (and count) a request of `requests` and `tokens` (an estimate), or refuse it, in
    two halves: this one sends the call at once (pipelined: what else the caller sends before
    awaiting goes in the same round trip), `check_finish` awaits the answer."""
    if not limits:
        return CheckStarted(limits, 0, decision=_no_limits(now_ms))
    mode, requests, tokens, specs, now = _check_args(limits, requests, tokens, now_ms)
    return CheckStarted(limits, now, call=_astart(key_id, mode, requests, tokens, specs, now))


async def check_finish(started: CheckStarted) -> Decision:
    if started.decision is not None:
        return started.decision
    backend, result = await _afinish(started.call)
    return _decision(started.limits, backend, result, started.now)


def _settle_args(key_id, limits, admitted_at_ms, token_delta, request_delta, now_ms):
    deltas = {"tokens": token_delta, "requests": request_delta}
    if key_id not in _local.handover:  # only the windows that change
        limits = [lim for lim in limits if deltas[lim.kind]]
    if not limits or not (token_delta or request_delta):
        return None
    return _APPLY, 0, 0, _specs(limits, deltas, admitted_at_ms), _now(now_ms)


async def asettle(
    key_id: str,
    limits: list[Limit],
    *,
    admitted_at_ms: int,
    token_delta: int = 0,
    request_delta: int = 0,
    now_ms: int | None = None,
) -> None:
    """Add the deltas (may be negative; a bucket never goes below 0) to the bucket the admission
    at `admitted_at_ms` went into, if it is still live; if it aged out, nothing happens (what it
    held has already left the window). While Redis answers, the settlement is not sent by
    itself: it goes with the key's next call, or within SETTLE_DELAY_SECONDS (_Pending)."""
    args = _settle_args(key_id, limits, admitted_at_ms, token_delta, request_delta, now_ms)
    if args is None:
        return
    if settings.REDIS_URL and redis_breaker().down_since is None:
        if _pending.add(key_id, args[3]):
            _schedule_flush(key_id)
        return
    await _arun(key_id, *args)


def peek(key_id: str, limits: list[Limit], *, now_ms: int | None = None) -> list[WindowState]:
    """The windows now, without counting anything (GET /v1/key, the dashboard)."""
    if not limits:
        return []
    _, result = _run(key_id, _PEEK, 0, 0, _specs(limits), _now(now_ms))
    return _states(limits, result)


def peek_start(key_id: str, limits: list[Limit], *, now_ms: int | None = None) -> CheckStarted:
    """The windows now, without counting anything, in two halves as check_start /
    check_finish (the /v1 headers of a request refused before admission)."""
    if not limits:
        return CheckStarted(limits, 0, decision=_no_limits(now_ms))
    now = _now(now_ms)
    return CheckStarted(limits, now, call=_astart(key_id, _PEEK, 0, 0, _specs(limits), now))


async def peek_finish(started: CheckStarted) -> list[WindowState]:
    if started.decision is not None:
        return []
    _, result = await _afinish(started.call)
    return _states(started.limits, result)


def reset(*key_ids: str) -> None:
    """Delete the windows of these keys (tests and the benchmarks), here and in Redis. Raises
    redis.RedisError if Redis is configured and cannot be reached: the counts there remain."""
    _local.forget(key_ids)
    _pending.forget(key_ids)
    if not key_ids or not settings.REDIS_URL:
        return
    suffixes = sorted(set(_SUFFIXES.values()))
    pipe = redis_client().pipeline(transaction=False)
    for key_id in key_ids:  # one DEL per key id: each is its own Cluster slot
        pipe.delete(*(_key(key_id, suffix) for suffix in suffixes))
    try:
        pipe.execute()
    except REDIS_ERRORS as error:
        redis_breaker().failed(error)
        raise
