"""The limiter's window arithmetic, shared by both backends: a key's limits as `Limit`s, the call
specs the Redis script and the in-process backend take, and one window's buckets (`Window`, the
script's arithmetic in Python). Pure: no I/O, no settings.

A window of length W has BUCKETS buckets of ceil(W / BUCKETS) ms; a bucket stays counted until
its latest admission is W ms old (docs/limiter.md, "The algorithm").
"""

import time
from dataclasses import dataclass

BUCKETS = 60
SPAN = BUCKETS + 2  # as in the script: live buckets never reach further past the oldest
MINUTE_MS = 60_000
DAY_MS = 86_400_000

# The script's modes.
CHECK, PEEK, APPLY = 1, 2, 3
_KINDS = {"requests": 0, "tokens": 1}
# name -> (kind, key suffix); the per-minute and per-day windows in limits_for's order.
_WINDOWS = {
    "requests_per_minute": ("requests", "rpm"),
    "requests_per_day": ("requests", "rpd"),
    "tokens_per_minute": ("tokens", "tpm"),
    "tokens_per_day": ("tokens", "tpd"),
}
_BURSTS = {"requests": ("burst_requests", "brq"), "tokens": ("burst_tokens", "btk")}
SUFFIXES = {name: suffix for name, (_, suffix) in _WINDOWS.items()} | dict(_BURSTS.values())
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
    burst percent, the per-minute limits are raised and burst windows added (docs/limiter.md;
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


def now_ms(now: int | None) -> int:
    return int(time.time() * 1000) if now is None else int(now)


def redis_key(key_id: str, suffix: str) -> str:
    return f"rl:{{{key_id}}}:{suffix}"


# A call, as both backends take it: mode, requests, tokens, and per window
# (suffix, window_ms, limit, kind, [(at_ms, delta), ...]). Both answer the script's list:
# [allowed, refusing window (1-based, 0 none), retry_after_ms, used_1, reset_1, ...].
Spec = tuple[str, int, int, int, list[tuple[int, int]]]


def specs(limits: list[Limit], adds: dict[str, int] | None = None, at: int = 0) -> list[Spec]:
    result = []
    for lim in limits:
        delta = (adds or {}).get(lim.kind, 0)
        result.append(
            (
                SUFFIXES.get(lim.name, lim.name),
                lim.window_ms,
                lim.limit,
                _KINDS[lim.kind],
                [(at, delta)] if delta else [],
            )
        )
    return result


def states(limits: list[Limit], result: list[int]) -> list[WindowState]:
    return [
        WindowState(
            limit=lim,
            used=result[3 + 2 * i],
            remaining=max(0, lim.limit - result[3 + 2 * i]),
            reset_ms=result[4 + 2 * i],
        )
        for i, lim in enumerate(limits)
    ]


def decision(limits: list[Limit], backend: str, result: list[int], now: int) -> Decision:
    allowed = bool(result[0])
    return Decision(
        allowed=allowed,
        windows=states(limits, result),
        refused_by=None if allowed else limits[result[1] - 1],
        retry_after_ms=0 if allowed else result[2],
        backend=backend,
        at_ms=now,
    )


class Window:
    """One window's buckets, as the script keeps them in Redis."""

    __slots__ = ("buckets", "dirty", "lasts", "oldest", "total", "width", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.width = -(-window_ms // BUCKETS)
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

    def count(self, now: int, amount: int) -> None:
        """Count an admission of `amount` at `now` (after prune)."""
        index = now // self.width
        self.buckets[index] = self.buckets.get(index, 0) + amount
        self.lasts[index] = now
        self.total += amount
        if self.oldest is None or index < self.oldest:
            self.oldest = index
        self.dirty = True

    def retry_after(self, now: int, cutoff: int, amount: int, limit: int) -> int:
        if amount > limit:
            return self.window_ms
        need, freed = self.total + amount - limit, 0
        for index in range(self.oldest, cutoff + SPAN + 1):
            freed += self.buckets.get(index, 0)
            if freed >= need:
                return self.last(index) + self.window_ms - now
        return self.window_ms
