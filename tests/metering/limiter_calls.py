"""The limiter's calls as tests make them, through what production runs: the gateway's
check_start/check_finish, asettle and peek_start/peek_finish (metering/admission.py,
aibaas/gateway/pipeline.py), and the per-IP layer's ip_check_start/ip_check_finish. The sync
forms run them on one event loop of their own, in a thread, kept for the whole run: as in a
server process, its Redis connections are reused from call to call."""

import asyncio
import threading

from metering import ip_limit, limiter


async def acheck(key_id, limits, *, requests=1, tokens=0, now_ms=None) -> limiter.Decision:
    started = limiter.check_start(key_id, limits, requests=requests, tokens=tokens, now_ms=now_ms)
    return await limiter.check_finish(started)


_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def run(coroutine):
    """Run `coroutine` on the helpers' loop and return its result (from sync code)."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True, name="limiter-calls").start()
    return asyncio.run_coroutine_threadsafe(coroutine, _loop).result()


def check(key_id, limits, **kwargs) -> limiter.Decision:
    return run(acheck(key_id, limits, **kwargs))


async def asettle_now(
    key_id, limits, *, admitted_at_ms, token_delta=0, request_delta=0, now_ms=None
):
    """What asettle sends, sent now and at `now_ms`: the call its pending settlement rides
    with, or its timer's (tests move the clock; the timer would send it at the real time)."""
    args = limiter._settle_args(key_id, limits, admitted_at_ms, token_delta, request_delta, now_ms)
    if args is not None:
        await limiter.backend.arun(key_id, *args)


def settle(key_id, limits, **kwargs) -> None:
    run(asettle_now(key_id, limits, **kwargs))


async def apeek(key_id, limits, *, now_ms=None) -> list[limiter.WindowState]:
    return await limiter.peek_finish(limiter.peek_start(key_id, limits, now_ms=now_ms))


async def ip_check(ip, *, now_ms=None) -> int:
    return await ip_limit.ip_check_finish(ip_limit.ip_check_start(ip, now_ms=now_ms))
