"""The per-IP layer in front of the per-key limits (DESIGN.md, request path step 3): one client
address makes at most GATEWAY_IP_RATE requests (default "6000/m"; "" turns it off) to the
inference endpoints, whatever keys it uses. A shield against abuse, not a plan limit.

Counting: the sliding-window estimate over two fixed windows; every attempt counts, refused
ones too. On Redis, one EVALSHA of metering/lua/ip_window.lua on `ip:{<address>}:<window>`
(Cluster safe), pipelined with the key's own limiter call (infra.redis_clients.apipelined);
without Redis, or while its breaker is open (infra/breaker.py), the same counting in the
process. The rate syntax is django-ratelimit's ("6000/m"); why not django-ratelimit itself:
docs/limiter.md.
"""

import asyncio
import hashlib
import ipaddress
import math
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import redis
from django.conf import settings

from infra.breaker import redis_breaker
from infra.redis_clients import REDIS_ERRORS, apipelined, aredis_client, submit

SCRIPT = (Path(__file__).parent / "lua" / "ip_window.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LOCAL_MAX_ADDRESSES = 100_000


def parse_rate(rate: str) -> tuple[int, int] | None:
    """django-ratelimit's rate syntax: "6000/m" -> (6000, 60 s), "5/10s" -> (5, 10); "" -> None.
    Raises ValueError for anything else."""
    if not rate or not rate.strip():
        return None
    match = _RATE.match(rate)
    if match is None:
        raise ValueError(f"not a rate: {rate!r} (use e.g. '6000/m' or '100/10s')")
    count, multiplier, unit = match.groups()
    seconds = _UNIT_SECONDS[(unit or "s").lower()] * (int(multiplier) if multiplier else 1)
    if seconds <= 0:
        raise ValueError(f"not a rate: {rate!r} (the period must be positive)")
    return int(count), seconds


_parsed: dict[str, tuple[int, int] | None] = {}


def current_rate() -> tuple[int, int] | None:
    value = settings.GATEWAY_IP_RATE
    if value not in _parsed:
        _parsed[value] = parse_rate(value)
    return _parsed[value]


def _retry_after(count: int, previous: int, limit: int, elapsed_ms: int, period_ms: int) -> int:
    """Whole seconds until a retry would be admitted, if nothing else comes (the retry counts
    too: one more in this window, or the first of the next), rounded up; never more than the
    period, as every Retry-After (an address that keeps hammering counts itself further out,
    and is told again)."""
    if count < limit and previous > 0:
        # Within this window: the previous window's weight has to fall far enough.
        free_at = period_ms * (1 - (limit - count - 1) / previous)
        wait = free_at - elapsed_ms
    else:
        # Next window, where this one's count is the weighted previous and the retry the first.
        wait = period_ms - elapsed_ms + max(0.0, period_ms * (1 - (limit - 1) / count))
    return min(max(1, math.ceil(wait / 1000)), math.ceil(period_ms / 1000))


def _verdict(count: int, previous: int, limit: int, now_ms: int, period_ms: int) -> int:
    """0 when admitted, else the seconds to wait."""
    elapsed = now_ms % period_ms
    estimate = previous * (period_ms - elapsed) / period_ms + count
    if estimate <= limit:
        return 0
    return _retry_after(count, previous, limit, elapsed, period_ms)


class _Local:
    """The in-process counters: address -> (window number, count, previous count)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: OrderedDict[str, tuple[int, int, int]] = OrderedDict()

    def count(self, ip: str, window: int) -> tuple[int, int]:
        with self.lock:
            number, count, previous = self.counts.pop(ip, (window, 0, 0))
            if number != window:
                previous = count if number == window - 1 else 0
                count = 0
            count += 1
            self.counts[ip] = (window, count, previous)
            while len(self.counts) > LOCAL_MAX_ADDRESSES:
                self.counts.popitem(last=False)
            return count, previous

    def clear(self) -> None:
        with self.lock:
            self.counts.clear()


_local = _Local()


def _key(ip: str, window: int) -> str:
    return f"ip:{{{ip}}}:{window}"


_addresses: dict[tuple[str, int], str] = {}


def _address(ip: str) -> str:
    """_counted_as, remembered: clients repeat their addresses, and parsing one costs more
    than the rest of the check."""
    mask = settings.RATELIMIT_IPV6_MASK
    if len(ip) > 64:  # not an address (addresses are canonical by now): not worth keeping
        return _counted_as(ip, mask)
    address = _addresses.get((ip, mask))
    if address is None:
        if len(_addresses) >= 10_000:
            _addresses.clear()
        address = _addresses[(ip, mask)] = _counted_as(ip, mask)
    return address


def _counted_as(ip: str, mask: int) -> str:
    """The address as counted: canonical when it is one (::ffff:1.2.3.4 and 1.2.3.4 alike), an
    IPv6 address as its network of RATELIMIT_IPV6_MASK bits (django-ratelimit's setting,
    default 64: one customer line gets a whole /64 and could cycle through it), else its first
    64 characters: still counted, never a key as long as a header."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ip.strip()[:64]
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return str(mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{mask}", strict=False).network_address)
    return str(address)


class IpStarted:
    """A per-IP check sent to Redis, not yet answered (ip_check_start / ip_check_finish)."""

    __slots__ = ("args", "future", "ip", "limit", "now_ms", "period_ms", "verdict", "window")

    def __init__(
        self, ip="", limit=0, period_ms=1, now_ms=0, window=0, verdict: int | None = None
    ) -> None:
        self.ip, self.limit, self.period_ms = ip, limit, period_ms
        self.now_ms, self.window, self.verdict = now_ms, window, verdict
        self.args: tuple | None = None
        self.future = None


def ip_check_start(ip: str | None, *, now_ms: int | None = None) -> IpStarted:
    """Count one request of this address (0 without an address or when the layer is off), in
    two halves: this one counts the request now (pipelined: it shares the round
    trip of what the caller sends before awaiting), ip_check_finish awaits the answer."""
    rate = current_rate()
    if rate is None or not ip:
        return IpStarted(verdict=0)
    limit, seconds = rate
    ip = _address(ip)
    period_ms = seconds * 1000
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    window = now_ms // period_ms
    started = IpStarted(ip=ip, limit=limit, period_ms=period_ms, now_ms=now_ms, window=window)
    if settings.REDIS_URL and redis_breaker().usable():
        started.args = (SCRIPT_SHA, 2, _key(ip, window), _key(ip, window - 1), 2 * period_ms)
        started.future = submit("evalsha", *started.args)
    else:
        started.verdict = _local_verdict(started)
    return started


def _local_verdict(started: IpStarted) -> int:
    count, previous = _local.count(started.ip, started.window)
    return _verdict(count, previous, started.limit, started.now_ms, started.period_ms)


async def ip_check_finish(started: IpStarted) -> int:
    """0 when the address may go on, else the seconds until it may (Retry-After)."""
    if started.verdict is not None:
        return started.verdict
    try:
        try:
            count, previous = await asyncio.shield(started.future)
        except redis.exceptions.NoScriptError:
            await aredis_client().script_load(SCRIPT)
            count, previous = await apipelined("evalsha", *started.args)
    except REDIS_ERRORS as error:
        redis_breaker().failed(error)
        started.verdict = _local_verdict(started)
        return started.verdict
    redis_breaker().succeeded()
    started.verdict = _verdict(
        int(count), int(previous or 0), started.limit, started.now_ms, started.period_ms
    )
    return started.verdict


def reset_state() -> None:
    """Forget the in-process counters (tests)."""
    _local.clear()
    _parsed.clear()
    _addresses.clear()
