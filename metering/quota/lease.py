"""Quota leases: one process's slice of an organization's month, so that far from its quota a
request is admitted without a database statement of its own (the gateway's path on PostgreSQL).

A lease is reserved in the counter row by the same conditional statement as a single request
(admitted whole or refused whole), so every process's leases and admissions together never pass
the quota; the row's leased_requests / leased_tokens / leased_until hold it while it is out.
What it did not use goes back when idle (QUOTA_LEASE_IDLE_SECONDS), old
(QUOTA_LEASE_MAX_AGE_SECONDS), spent, on a change of limits and at shutdown. Near the quota
leases shrink to nothing: each request is one ask, as without leases. A dead process's lease is
quota lost, never given away; a lease reserved before a reset admits only from room counted
before it (generations). Per event loop. Sizes, bursts, timing, "exact": docs/quota-leases.md.
"""

import asyncio
import time
from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings

from infra.loops import PerLoop
from metering.quota import batched
from metering.quota.counter import (
    QuotaDecision,
    QuotaUnavailable,
    decision_for,
    lease_max_age,
    period_for,
    unavailable,
    utc,
)

LEASE_FRACTION = 64
LEASE_MAX = 4096


@dataclass(slots=True)
class _Lease:
    request_limit: int | None
    token_limit: int | None
    generation: int  # the counter's, when the lease was reserved
    requests: int  # left to admit
    tokens: int  # left to admit (negative: owed after settlements above the estimates)
    reserved: tuple[int, int]  # what its reservation put in the row's leased columns
    # Monotonic: when its reservation came back plus QUOTA_LEASE_MAX_AGE_SECONDS; from then on
    # it admits nothing (read once here: no settings lookup per admission).
    expires: float
    last_use: float
    timer: asyncio.TimerHandle | None = None

    def usable(self, request_limit: int | None, token_limit: int | None, clock: float) -> bool:
        """Whether it may still admit: under the same limits (no plan change), not too old."""
        return (self.request_limit, self.token_limit) == (request_limit, token_limit) and (
            clock < self.expires
        )

    def fits(self, tokens: int) -> bool:
        return self.requests >= 1 and self.tokens >= max(tokens, 1)


class _Leases:
    """The leases and the last figures seen, of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.leases: dict[tuple[int, date], _Lease] = {}
        self.figures: dict[tuple[int, date], tuple[int, int]] = {}  # after the last ask
        # A lease being reserved: the requests that find no room meanwhile wait for it instead
        # of reserving one each (500 streams arriving at once would reserve 500 leases). The
        # future is done once the reservation's outcome is known (and its lease in `leases`):
        # its decision, or the exception it failed with (see _leased).
        self.reserving: dict[tuple[int, date], asyncio.Future] = {}
        self.waiting: dict[tuple[int, date], int] = {}  # requests waiting for `reserving`

    def size(self, key, request_limit, token_limit, tokens: int) -> tuple[int, int]:
        """(requests, tokens) to reserve for a lease now; (1, tokens) = no lease. At least
        QUOTA_LEASE_REQUESTS, or the requests waiting for a lease (a burst: 500 streams
        arriving at once are served by one reservation, not eight in a row), at most
        LEASE_MAX, and never more than 1/64 of what remains."""
        figures = self.figures.get(key)
        if figures is None:
            return 1, tokens
        size = settings.QUOTA_LEASE_REQUESTS
        if size > 1:
            size = min(max(size, self.waiting.get(key, 0) + 1), LEASE_MAX)
        if request_limit is not None:
            size = min(size, (request_limit - figures[0]) // LEASE_FRACTION)
        lease_tokens = size * max(tokens, 1)
        if token_limit is not None:
            lease_tokens = min(lease_tokens, (token_limit - figures[1]) // LEASE_FRACTION)
        if size < 2 or lease_tokens < 2 * max(tokens, 1):
            return 1, tokens
        return size, lease_tokens

    def far(self, key, request_limit, token_limit, tokens: int) -> bool:
        return self.size(key, request_limit, token_limit, tokens)[0] > 1

    def seen(self, key, decision: QuotaDecision) -> None:
        """A statement's decision: its figures, and its generation. A lease of an earlier
        generation is forgotten: the counter was reset since, and zeroed the lease with it
        (nothing to give back)."""
        self.figures[key] = (decision.requests_used, decision.tokens_used)
        lease = self.leases.get(key)
        if lease is not None and lease.generation < decision.generation:
            self.forget(key)

    def forget(self, key) -> _Lease | None:
        lease = self.leases.pop(key, None)
        if lease is not None and lease.timer is not None:
            lease.timer.cancel()
        return lease

    def give_back(self, organization_id: int, period: date) -> None:
        """The lease's unused part back to the counter, and its reservation off the row's
        leased columns, if the counter has not been reset since (rides with the next
        statement)."""
        lease = self.forget((organization_id, period))
        if lease is None:
            return
        if lease.requests or lease.tokens or any(lease.reserved):
            batched.settle_start(
                organization_id,
                period=period,
                request_delta=-lease.requests,
                token_delta=-lease.tokens,
                generation=lease.generation,
                leased_delta=(-lease.reserved[0], -lease.reserved[1]),
            )

    def watch(self, organization_id: int, period: date, lease: _Lease) -> None:
        """Give the lease back once idle for QUOTA_LEASE_IDLE_SECONDS or at its max age."""
        idle = settings.QUOTA_LEASE_IDLE_SECONDS

        def due_in() -> float:
            return min(lease.last_use + idle, lease.expires) - time.monotonic()

        def check() -> None:
            if self.leases.get((organization_id, period)) is not lease:
                return
            wait = due_in()
            if wait <= 0:
                self.give_back(organization_id, period)
            else:
                lease.timer = self.loop.call_later(wait, check)

        lease.timer = self.loop.call_later(max(due_in(), 0), check)


_loops: PerLoop[_Leases] = PerLoop(_Leases)
_leases = _loops.get


def far_from_quota(
    organization_id: int, request_limit: int | None, token_limit: int | None, tokens: int
) -> bool:
    """Whether this loop last saw the organization far from its quota (room for leases)."""
    key = (organization_id, period_for(utc(None)))
    return _leases().far(key, request_limit, token_limit, tokens)


def _done(decision: QuotaDecision) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(decision)
    return future


def admit_start(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int,
    now: datetime | None,
) -> asyncio.Future:
    """One admission: from this loop's lease when it has room (no I/O), else by an ask
    (batched.py) that reserves a new lease along when far from the quota."""
    now = utc(now)
    state = _leases()
    period = period_for(now)
    key = (organization_id, period)
    lease = state.leases.get(key)
    clock = time.monotonic()
    if lease is not None and not lease.usable(request_limit, token_limit, clock):
        state.give_back(organization_id, period)  # a plan change, or too old
        lease = None
    if lease is not None and lease.fits(tokens):
        lease.requests -= 1
        lease.tokens -= tokens
        lease.last_use = clock
        figures = state.figures[key]
        return _done(
            decision_for(
                now=now,
                request_limit=request_limit,
                token_limit=token_limit,
                allowed=True,
                exceeded=None,
                used=figures,
                counted=True,
                leased=True,
                generation=lease.generation,
            )
        )
    limits = {"request_limit": request_limit, "token_limit": token_limit, "now": now}
    count, reserve = state.size(key, request_limit, token_limit, tokens)
    if count == 1:
        # One request alone, queued now (it shares the organization's next statement).
        return _alone(state, key, organization_id, limits, tokens)
    reserving = state.reserving.get(key)
    if reserving is not None:
        state.waiting[key] = state.waiting.get(key, 0) + 1
        return asyncio.ensure_future(_after(state, key, reserving, organization_id, limits, tokens))
    # The spent lease goes back in the same statement as the new one's reservation.
    state.give_back(organization_id, period)
    part = (count - 1, reserve - tokens)  # this request takes one of them, and its tokens
    reservation = batched.admit_start(
        organization_id, **limits, tokens=reserve, count=count, lease=part
    )
    ready = state.reserving[key] = state.loop.create_future()
    return asyncio.ensure_future(
        _leased(state, organization_id, period, reservation, ready, part, tokens, limits)
    )


def _alone(state: _Leases, key, organization_id: int, limits: dict, tokens: int) -> asyncio.Future:
    """One request asked alone (no lease): it shares the organization's next statement."""
    future = batched.admit_start(organization_id, **limits, tokens=tokens)
    future.add_done_callback(lambda done: _seen(state, key, done))
    return future


def _seen(state: _Leases, key, done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is None:
        decision = done.result()
        if decision.counted or not decision.allowed:  # the database's figures
            state.seen(key, decision)


async def _after(state: _Leases, key, reserving: asyncio.Future, organization_id, limits, tokens):
    """Admit once the lease being reserved is there, from it (or by the next reservation once
    it is spent); alone when there is no lease to take from; failed when its reservation
    failed (the module docstring)."""
    try:
        await asyncio.wait([reserving])
    finally:
        left = state.waiting.get(key, 1) - 1
        if left > 0:
            state.waiting[key] = left
        else:
            state.waiting.pop(key, None)
    outcome = None if reserving.cancelled() else reserving.result()
    if isinstance(outcome, Exception):
        return unavailable(organization_id, outcome, **limits)  # raises, unless fail-open
    if isinstance(outcome, QuotaDecision) and outcome.allowed and not outcome.counted:
        # QUOTA_FAIL_OPEN admitted the reservation's request unmetered: the same for this one.
        failed = QuotaUnavailable("the lease reservation this request waited for failed")
        return unavailable(organization_id, failed, **limits)
    lease = state.leases.get(key)
    usable = lease is not None and lease.usable(
        limits["request_limit"], limits["token_limit"], time.monotonic()
    )
    if usable or key in state.reserving:  # from the lease, or wait for the next one
        return await admit_start(organization_id, **limits, tokens=tokens)
    # Refused (others spent the room), or expired or given back meanwhile: asked alone. The
    # waiters all wake now, so their asks share one statement instead of each reserving a
    # lease in turn.
    return await _alone(state, key, organization_id, limits, tokens)


def _ready(state: _Leases, key, ready: asyncio.Future, outcome) -> None:
    """The reservation's outcome is known: the requests waiting for it go on."""
    if state.reserving.get(key) is ready:
        del state.reserving[key]
    if not ready.done():
        ready.set_result(outcome)


async def _leased(state, organization_id, period, reservation, ready, part, tokens, limits):
    """This request and a new lease, reserved together; alone if the lease does not fit."""
    key = (organization_id, period)
    outcome = None  # cancelled: the waiters are asked alone
    try:
        try:
            decision = outcome = await reservation
        except Exception as error:
            outcome = error
            raise
        if decision.allowed and not decision.counted:  # QUOTA_FAIL_OPEN admitted it unmetered
            return decision
        state.seen(key, decision)
        if decision.allowed:
            # A lease that came meanwhile (none does: requests wait for this one) goes back.
            state.give_back(organization_id, period)
            came_back = time.monotonic()
            lease = state.leases[key] = _Lease(
                request_limit=limits["request_limit"],
                token_limit=limits["token_limit"],
                generation=decision.generation,
                requests=part[0],
                tokens=part[1],
                reserved=part,
                expires=came_back + lease_max_age(),  # its age counts from here (docstring)
                last_use=came_back,
            )
            state.watch(organization_id, period, lease)
            decision.leased = True
            return decision
    finally:
        _ready(state, key, ready, outcome)
    # Others spent the room meanwhile: this request alone, with the waiters' asks.
    return await _alone(state, key, organization_id, limits, tokens)


def settle(
    organization_id: int,
    period: date,
    *,
    token_delta: int,
    request_delta: int,
    generation: int | None = None,
) -> bool:
    """Settle a leased admission into this loop's lease; False when the lease is gone (given
    back meanwhile: the caller settles with the counter) or of another generation than the
    admission's, when given."""
    state = _leases()
    lease = state.leases.get((organization_id, period))
    if lease is None or (generation is not None and generation != lease.generation):
        return False
    lease.requests -= request_delta
    lease.tokens -= token_delta
    return True


def give_back_all() -> None:
    """Every lease of this loop back to the counter (shutdown, tests): then batched.aflush."""
    state = _loops.current()
    if state is not None:
        for organization_id, period in list(state.leases):
            state.give_back(organization_id, period)


def forget_all() -> None:
    """Forget every loop's leases and figures (tests); their unused parts are not given back."""
    _loops.clear()
