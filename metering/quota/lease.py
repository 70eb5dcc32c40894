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
from datetime import date

from metering.quota import batched
from metering.quota.decision import (
    QuotaAsk,
    QuotaDecision,
    QuotaUnavailable,
    decision_for,
    lease_max_age,
    period_for,
    unavailable,
    utc,
)
from metering.quota.lease_state import LEASE_FRACTION, LEASE_MAX, Lease, Leases, loops

__all__ = ["LEASE_FRACTION", "LEASE_MAX", "admit_start", "far_from_quota", "settle"]

_leases = loops.get


def far_from_quota(ask: QuotaAsk) -> bool:
    """Whether this loop last saw the organization far from its quota (room for leases)."""
    key = (ask.organization_id, period_for(utc(None)))
    return _leases().far(key, ask.request_limit, ask.token_limit, ask.tokens)


def _done(decision: QuotaDecision) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(decision)
    return future


def _from_lease(state: Leases, key, lease: Lease, ask: QuotaAsk, clock: float):
    lease.requests -= 1
    lease.tokens -= ask.tokens
    lease.last_use = clock
    return _done(
        decision_for(
            ask,
            allowed=True,
            exceeded=None,
            used=state.figures[key],
            counted=True,
            leased=True,
            generation=lease.generation,
        )
    )


def admit_start(ask: QuotaAsk) -> asyncio.Future:
    """One admission: from this loop's lease when it has room (no I/O), else by an ask
    (batched.py) that reserves a new lease along when far from the quota."""
    state = _leases()
    period = period_for(ask.now)
    key = (ask.organization_id, period)
    lease = state.leases.get(key)
    clock = time.monotonic()
    if lease is not None and not lease.usable(ask.request_limit, ask.token_limit, clock):
        state.give_back(ask.organization_id, period)  # a plan change, or too old
        lease = None
    if lease is not None and lease.fits(ask.tokens):
        return _from_lease(state, key, lease, ask, clock)
    count, reserve = state.size(key, ask.request_limit, ask.token_limit, ask.tokens)
    if count == 1:
        # One request alone, queued now (it shares the organization's next statement).
        return _alone(state, key, ask)
    reserving = state.reserving.get(key)
    if reserving is not None:
        state.waiting[key] = state.waiting.get(key, 0) + 1
        return asyncio.ensure_future(_after(state, key, reserving, ask))
    # The spent lease goes back in the same statement as the new one's reservation.
    state.give_back(ask.organization_id, period)
    part = (count - 1, reserve - ask.tokens)  # this request takes one of them, and its tokens
    reservation = batched.reservation(ask, count, reserve, part)
    ready = state.reserving[key] = state.loop.create_future()
    return asyncio.ensure_future(_leased(state, ask, reservation, ready, part))


def _alone(state: Leases, key, ask: QuotaAsk) -> asyncio.Future:
    """One request asked alone (no lease): it shares the organization's next statement."""
    future = batched.admit_start(ask)
    future.add_done_callback(lambda done: _seen(state, key, done))
    return future


def _seen(state: Leases, key, done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is None:
        decision = done.result()
        if decision.counted or not decision.allowed:  # the database's figures
            state.seen(key, decision)


async def _after(state: Leases, key, reserving: asyncio.Future, ask: QuotaAsk):
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
        return unavailable(ask, outcome)  # raises, unless fail-open
    if isinstance(outcome, QuotaDecision) and outcome.allowed and not outcome.counted:
        # QUOTA_FAIL_OPEN admitted the reservation's request unmetered: the same for this one.
        failed = QuotaUnavailable("the lease reservation this request waited for failed")
        return unavailable(ask, failed)
    lease = state.leases.get(key)
    usable = lease is not None and lease.usable(*ask.limits, time.monotonic())
    if usable or key in state.reserving:  # from the lease, or wait for the next one
        return await admit_start(ask)
    # Refused (others spent the room), or expired or given back meanwhile: asked alone. The
    # waiters all wake now, so their asks share one statement instead of each reserving a
    # lease in turn.
    return await _alone(state, key, ask)


def _ready(state: Leases, key, ready: asyncio.Future, outcome) -> None:
    """The reservation's outcome is known: the requests waiting for it go on."""
    if state.reserving.get(key) is ready:
        del state.reserving[key]
    if not ready.done():
        ready.set_result(outcome)


def _new_lease(state: Leases, ask: QuotaAsk, period: date, decision, part) -> None:
    # A lease that came meanwhile (none does: requests wait for this one) goes back.
    state.give_back(ask.organization_id, period)
    came_back = time.monotonic()
    lease = state.leases[(ask.organization_id, period)] = Lease(
        request_limit=ask.request_limit,
        token_limit=ask.token_limit,
        generation=decision.generation,
        requests=part[0],
        tokens=part[1],
        reserved=part,
        expires=came_back + lease_max_age(),  # its age counts from here (docstring)
        last_use=came_back,
    )
    state.watch(ask.organization_id, period, lease)


async def _leased(state, ask: QuotaAsk, reservation, ready, part):
    """This request and a new lease, reserved together; alone if the lease does not fit."""
    period = period_for(ask.now)
    key = (ask.organization_id, period)
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
            _new_lease(state, ask, period, decision, part)
            decision.leased = True
            return decision
    finally:
        _ready(state, key, ready, outcome)
    # Others spent the room meanwhile: this request alone, with the waiters' asks.
    return await _alone(state, key, ask)


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
    state = loops.current()
    if state is not None:
        for organization_id, period in list(state.leases):
            state.give_back(organization_id, period)


def forget_all() -> None:
    """Forget every loop's leases and figures (tests); their unused parts are not given back."""
    loops.clear()
