"""The monthly quota of an organization: requests and tokens per calendar month (UTC), counted
in the database, the one source of truth (DESIGN.md, "Quotas"). A request asks with one
`QuotaAsk`; the answer is a `QuotaDecision`. Invariant: never over the quota, whatever the
number of processes; errors only ever lose quota, never give it away.

Paths: on PostgreSQL, lease.py (a process's slice of the month) over batched.py (one statement
per organization-month for what arrives meanwhile); elsewhere counter.py in a worker thread.
decision.py holds the values and arithmetic, reset.py the reads and the operators' reset.
Reasoning and figures: docs/quota-leases.md.
"""

import asyncio
from collections.abc import Awaitable
from datetime import date

from django.db import DEFAULT_DB_ALIAS, connections

from metering.quota import batched, counter, lease
from metering.quota.decision import (
    REQUESTS,
    TOKENS,
    QuotaAsk,
    QuotaDecision,
    QuotaUnavailable,
    period_for,
    uncounted,
)
from metering.quota.reset import quota_reset, quota_usage

__all__ = [
    "REQUESTS",
    "TOKENS",
    "QuotaAsk",
    "QuotaDecision",
    "QuotaUnavailable",
    "aclose",
    "aflush",
    "aquota_admit_start",
    "aquota_settle",
    "close_connections",
    "far_from_quota",
    "period_for",
    "quota_reset",
    "quota_usage",
]


_vendor: str | None = None


def _batched() -> bool:
    global _vendor
    if _vendor is None:  # the engine does not change while the process runs
        _vendor = connections[DEFAULT_DB_ALIAS].vendor
    return _vendor == "postgresql"


def aquota_admit_start(ask: QuotaAsk) -> Awaitable[QuotaDecision]:
    """Count the ask against its organization's monthly quota, or refuse it, in two halves: the
    admission is queued (PostgreSQL) or started (elsewhere, in a thread) now, and the returned
    awaitable gives its decision (QuotaUnavailable when the database fails, unless
    QUOTA_FAIL_OPEN). No I/O when the ask is unlimited."""
    if ask.unlimited:
        done = asyncio.get_running_loop().create_future()
        done.set_result(uncounted(ask))
        return done
    if _batched():
        return asyncio.shield(lease.admit_start(ask))
    return asyncio.ensure_future(counter.aadmit_in_thread(ask))


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
    """Move the counter of `period` by the deltas (counter.settle). On PostgreSQL: into this
    process's lease when the admission came from it (`leased`), else with the organization's
    next statement; `wait` returns once applied (raises QuotaUnavailable if not), without it
    the caller goes on (`aflush` waits). Elsewhere (SQLite) in a worker thread either way.
    `generation`: the admission's; nothing moves once the counter was reset since."""
    if not token_delta and not request_delta:
        return
    deltas = {"token_delta": token_delta, "request_delta": request_delta, "generation": generation}
    if not _batched():
        await counter.asettle_in_thread(organization_id, period=period, **deltas)
        return
    if leased and lease.settle(organization_id, period, **deltas):
        return
    waiter = batched.settle_start(organization_id, period=period, **deltas)
    if wait:
        await asyncio.shield(waiter)


def far_from_quota(ask: QuotaAsk) -> bool:
    """Whether this process last saw the organization far from its quota (PostgreSQL; False
    elsewhere): the gateway then asks the quota alongside the key's rate limits."""
    return _batched() and lease.far_from_quota(ask)


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
