"""The monthly quota of an organization: requests and tokens per calendar month (UTC), counted
in the database, the one source of truth (DESIGN.md, "Quotas").

- counter.py: the rule, in sync code on Django's connection: one conditional UPDATE per
  admission on the organization's row for the month, lazy rollover, settlement, the reads and
  the operators' reset. Also the async path of databases other than PostgreSQL (SQLite, the
  embedded default), in a worker thread.
- batched.py: the same rule for async code on PostgreSQL (the gateway): on the event loop, the
  admissions and settlements of one organization-month made meanwhile in one statement.
- lease.py: on top of batched.py, far from the quota, a process reserves a small slice of it
  at once and admits requests from that slice without a statement each.

`aquota_admit` / `aquota_settle` pick the path by the database; everything else is counter.py's.
"""

import asyncio
from collections.abc import Awaitable
from datetime import date, datetime

from django.db import DEFAULT_DB_ALIAS, connections

from metering.quota import batched, lease
from metering.quota.counter import (
    REQUESTS,
    TOKENS,
    QuotaDecision,
    QuotaUnavailable,
    aquota_admit_in_thread,
    aquota_settle_in_thread,
    period_for,
    quota_admit,
    quota_reset,
    quota_settle,
    quota_usage,
    uncounted,
)

__all__ = [
    "REQUESTS",
    "TOKENS",
    "QuotaDecision",
    "QuotaUnavailable",
    "aclose",
    "aflush",
    "aquota_admit",
    "aquota_admit_start",
    "aquota_settle",
    "close_connections",
    "far_from_quota",
    "period_for",
    "quota_admit",
    "quota_reset",
    "quota_settle",
    "quota_usage",
]


_vendor: str | None = None


def _batched() -> bool:
    global _vendor
    if _vendor is None:  # the engine does not change while the process runs
        _vendor = connections[DEFAULT_DB_ALIAS].vendor
    return _vendor == "postgresql"


def aquota_admit_start(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int = 0,
    now: datetime | None = None,
) -> Awaitable[QuotaDecision]:
    """aquota_admit in two halves: the admission is queued (PostgreSQL) or started (elsewhere,
    in a thread) now, and the returned awaitable gives its decision."""
    if tokens < 0:
        raise ValueError("the token estimate cannot be negative")
    if request_limit is None and token_limit is None:
        done = asyncio.get_running_loop().create_future()
        done.set_result(uncounted(now))
        return done
    limits = {"request_limit": request_limit, "token_limit": token_limit}
    if _batched():
        return asyncio.shield(lease.admit_start(organization_id, **limits, tokens=tokens, now=now))
    return asyncio.ensure_future(
        aquota_admit_in_thread(organization_id, **limits, tokens=tokens, now=now)
    )


async def aquota_admit(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int = 0,
    now: datetime | None = None,
) -> QuotaDecision:
    """quota_admit for async code. No I/O when both limits are None (unlimited)."""
    return await aquota_admit_start(
        organization_id,
        request_limit=request_limit,
        token_limit=token_limit,
        tokens=tokens,
        now=now,
    )


async def aquota_settle(
    organization_id: int,
    *,
    period: date,
    token_delta: int = 0,
    request_delta: int = 0,
    leased: bool = False,
    wait: bool = True,
    generation: int | None = None,
) -> None:
    """quota_settle for async code. On PostgreSQL: into this process's lease when the admission
    came from it (`leased`), else with the organization's next statement; `wait` returns once
    applied (raises QuotaUnavailable if not), without it the caller goes on (`aflush` waits).
    Elsewhere (SQLite) it is written in a worker thread either way. `generation`: the
    admission's (QuotaDecision.generation); the settlement then does nothing once the counter
    was reset since (see lease.py)."""
    if not token_delta and not request_delta:
        return
    deltas = {"token_delta": token_delta, "request_delta": request_delta, "generation": generation}
    if not _batched():
        await aquota_settle_in_thread(organization_id, period=period, **deltas)
        return
    if leased and lease.settle(organization_id, period, **deltas):
        return
    waiter = batched.settle_start(organization_id, period=period, **deltas)
    if wait:
        await asyncio.shield(waiter)


def far_from_quota(
    organization_id: int, *, request_limit: int | None, token_limit: int | None, tokens: int
) -> bool:
    """Whether this process last saw the organization far from its quota (PostgreSQL; False
    elsewhere): the gateway then asks the quota alongside the key's rate limits."""
    return _batched() and lease.far_from_quota(organization_id, request_limit, token_limit, tokens)


async def aflush(*, leases: bool = False) -> None:
    """Wait for this event loop's pending quota statements (tests, shutdown); with `leases`,
    give its leases' unused parts back first."""
    if leases:
        lease.give_back_all()
    await batched.aflush()


async def aclose() -> None:
    """Give the leases back, flush and close this event loop's quota connections (shutdown)."""
    lease.give_back_all()
    await batched.aclose()


def close_connections() -> None:
    """Close every event loop's quota connections and forget their leases, from sync code
    (tests)."""
    lease.forget_all()
    batched.close_all()
