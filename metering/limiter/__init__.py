"""The per-key rate limiter: exact sliding windows, one atomic Redis round trip per request.

Windows per API key (never per user); `limits_for` turns a key's limits into `Limit`s.
Invariants: in no span of a window's length is more than its limit admitted; every window is
checked before any is counted, so a refused request counts nowhere; settling moves the token
windows from the estimate to the tokens used. Without REDIS_URL, or while Redis fails, the same
arithmetic runs in the process (logged, counted) and its counts join Redis when it answers.
Modules: windows.py (arithmetic), backend.py (the Redis script, pipelining, the choice of
backend), local.py (the in-process fallback), settlements.py (settlements riding with the next
call). The algorithm, its memory figures and the alternatives considered: docs/limiter.md.
"""

from django.conf import settings

from infra.breaker import redis_breaker
from metering.limiter import backend
from metering.limiter.backend import aflush_settlements, backend_status, reset_state
from metering.limiter.local import store
from metering.limiter.settlements import pending
from metering.limiter.windows import APPLY as _APPLY
from metering.limiter.windows import (
    CHECK,
    DAY_MS,
    MINUTE_MS,
    PEEK,
    Decision,
    Limit,
    WindowState,
    decision,
    limits_for,
    specs,
    states,
)
from metering.limiter.windows import now_ms as _now

__all__ = [
    "DAY_MS",
    "MINUTE_MS",
    "CheckStarted",
    "Decision",
    "Limit",
    "WindowState",
    "aflush_settlements",
    "asettle",
    "backend_status",
    "check_finish",
    "check_start",
    "limits_for",
    "peek",
    "peek_finish",
    "peek_start",
    "reset",
    "reset_state",
]


class CheckStarted:
    """A check sent, not yet answered (check_start / check_finish)."""

    __slots__ = ("call", "decision", "limits", "now")

    def __init__(self, limits, now, call=None, decision=None) -> None:
        self.limits, self.now, self.call, self.decision = limits, now, call, decision


def _no_limits(at_ms: int | None) -> Decision:
    return Decision(True, [], None, 0, backend_status()["backend"], _now(at_ms))


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
    if requests < 0 or tokens < 0:
        raise ValueError("requests and tokens cannot be negative")
    now = _now(now_ms)
    call = backend.astart(key_id, CHECK, requests, tokens, specs(limits), now)
    return CheckStarted(limits, now, call=call)


async def check_finish(started: CheckStarted) -> Decision:
    if started.decision is not None:
        return started.decision
    used, result = await backend.afinish(started.call)
    return decision(started.limits, used, result, started.now)


def _settle_args(key_id, limits, admitted_at_ms, token_delta, request_delta, now_ms):
    deltas = {"tokens": token_delta, "requests": request_delta}
    if key_id not in store.handover:  # only the windows that change
        limits = [lim for lim in limits if deltas[lim.kind]]
    if not limits or not (token_delta or request_delta):
        return None
    return _APPLY, 0, 0, specs(limits, deltas, admitted_at_ms), _now(now_ms)


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
    itself: it goes with the key's next call, or within SETTLE_DELAY_SECONDS (settlements.py)."""
    args = _settle_args(key_id, limits, admitted_at_ms, token_delta, request_delta, now_ms)
    if args is None:
        return
    if settings.REDIS_URL and redis_breaker().down_since is None:
        if pending.add(key_id, args[3]):
            backend.schedule_flush(key_id)
        return
    await backend.arun(key_id, *args)


def peek(key_id: str, limits: list[Limit], *, now_ms: int | None = None) -> list[WindowState]:
    """The windows now, without counting anything (GET /v1/key, the dashboard)."""
    if not limits:
        return []
    _, result = backend.run(key_id, PEEK, 0, 0, specs(limits), _now(now_ms))
    return states(limits, result)


def peek_start(key_id: str, limits: list[Limit], *, now_ms: int | None = None) -> CheckStarted:
    """The windows now, without counting anything, in two halves as check_start /
    check_finish (the /v1 headers of a request refused before admission)."""
    if not limits:
        return CheckStarted(limits, 0, decision=_no_limits(now_ms))
    now = _now(now_ms)
    return CheckStarted(limits, now, call=backend.astart(key_id, PEEK, 0, 0, specs(limits), now))


async def peek_finish(started: CheckStarted) -> list[WindowState]:
    if started.decision is not None:
        return []
    _, result = await backend.afinish(started.call)
    return states(started.limits, result)


def reset(*key_ids: str) -> None:
    """Delete the windows of these keys (tests and the benchmarks), here and in Redis. Raises
    redis.RedisError if Redis is configured and cannot be reached: the counts there remain."""
    store.forget(key_ids)
    pending.forget(key_ids)
    if key_ids and settings.REDIS_URL:
        backend.delete(key_ids)
