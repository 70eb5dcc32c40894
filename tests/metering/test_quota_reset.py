"""Resets of the monthly quota while requests are in flight and leases are out (metering/quota/
lease.py, "Resets, and what exact means"): a reset starts a new generation of the counter;
nothing counted before it (settlements, lease give-backs) moves the counter after it; a lease
reserved before it admits only what was counted before it, for at most
QUOTA_LEASE_MAX_AGE_SECONDS; what a generation admits never passes the quota."""

import asyncio
import threading
import time
from datetime import UTC, date, datetime

import pytest
from django.db import connections

from accounts.actors import Actor
from metering.models import QuotaCounter
from metering.quota import (
    QuotaAsk,
    aflush,
    aquota_admit_start,
    aquota_settle,
    lease,
    quota_reset,
)
from metering.quota import counter as quota_counter

NOV = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
NOV_1 = date(2026, 11, 1)


@pytest.fixture(autouse=True)
def november(time_machine):
    """The reset zeroes the current month: November, for the services and every thread."""
    time_machine.move_to(NOV, tick=False)


@pytest.fixture(autouse=True)
def _leases_go_back_when_told(settings):
    settings.QUOTA_LEASE_IDLE_SECONDS = 60
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 60


def row(org) -> QuotaCounter:
    return QuotaCounter.objects.get(organization=org, period=NOV_1)


def counter(org) -> tuple[int, int, int]:
    """(requests, tokens, generation)."""
    current = row(org)
    return current.requests, current.tokens, current.generation


def reset(org) -> None:
    quota_reset(org, actor=Actor.for_system("tests"), reason="test")


def in_thread(function):
    """function() for the executor: on a connection of its own, closed after."""

    def run():
        try:
            return function()
        finally:
            connections.close_all()

    return run


def admit(org, *, requests=100_000, tokens=10):
    return aquota_admit_start(
        QuotaAsk(org.pk, request_limit=requests, token_limit=None, tokens=tokens, now=NOV)
    )


# --- settlements ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_settlement_of_a_request_counted_before_a_reset_leaves_the_new_counter_alone(org):
    before = quota_counter.admit(QuotaAsk(org.pk, request_limit=10, token_limit=None, tokens=100))
    reset(org)
    after = quota_counter.admit(QuotaAsk(org.pk, request_limit=10, token_limit=None, tokens=100))
    assert (before.generation, after.generation) == (0, 1)

    # The first request used 10 tokens, not 100: its 90 were forgiven with the reset already.
    quota_counter.settle(org.pk, period=NOV_1, token_delta=-90, generation=before.generation)
    assert counter(org) == (1, 100, 1)
    quota_counter.settle(org.pk, period=NOV_1, token_delta=-60, generation=after.generation)
    assert counter(org) == (1, 40, 1)
    quota_counter.settle(
        org.pk, period=NOV_1, token_delta=5
    )  # no generation: whatever the row holds
    assert counter(org) == (1, 45, 1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_batched_settlement_of_a_request_counted_before_a_reset_leaves_the_new_counter_alone(
    org,
):
    async def scenario():
        loop = asyncio.get_running_loop()
        before = await admit(org, requests=10, tokens=100)  # near its quota: no lease
        await loop.run_in_executor(None, in_thread(lambda: reset(org)))
        after = await admit(org, requests=10, tokens=100)
        await aquota_settle(org.pk, period=NOV_1, token_delta=-90, generation=before.generation)
        await aquota_settle(org.pk, period=NOV_1, token_delta=-60, generation=after.generation)
        return before, after

    before, after = asyncio.run(scenario())
    assert not before.leased and not after.leased
    assert (before.generation, after.generation) == (0, 1)
    assert counter(org) == (1, 40, 1)


# --- leases -----------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_lease_given_back_after_a_reset_leaves_the_new_counter_alone(org):
    def reset_then_admit_ten():
        reset(org)
        for _ in range(10):
            quota_counter.admit(
                QuotaAsk(org.pk, request_limit=100_000, token_limit=None, tokens=10)
            )

    async def scenario():
        await admit(org)
        reserving = await admit(org)  # a lease of 64, 63 of them unused
        await asyncio.get_running_loop().run_in_executor(None, in_thread(reset_then_admit_ten))
        await aflush(leases=True)  # its 63 requests and 630 tokens were zeroed by the reset
        return reserving

    reserving = asyncio.run(scenario())
    assert reserving.leased and reserving.generation == 0
    assert counter(org) == (10, 100, 1)
    assert (row(org).leased_requests, row(org).leased_tokens) == (0, 0)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_lease_reserved_before_a_reset_admits_only_until_its_max_age(org, settings):
    """After the reset the old lease still admits (counted before the reset), but only until
    QUOTA_LEASE_MAX_AGE_SECONDS after its reservation came back; then a lease of the new
    generation."""
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 0.3

    async def scenario():
        await admit(org)
        await admit(org)  # the lease, generation 0
        reserved = time.monotonic()  # once its reservation came back
        await asyncio.get_running_loop().run_in_executor(None, in_thread(lambda: reset(org)))
        after_reset: list[tuple[float, object]] = []
        while not after_reset or after_reset[-1][1].generation == 0:
            assert time.monotonic() - reserved < 10, "the old lease was never left"
            asked = time.monotonic()
            after_reset.append((asked, await admit(org)))
            await asyncio.sleep(0.02)
        await aflush(leases=True)
        return reserved, after_reset

    reserved, after_reset = asyncio.run(scenario())
    old = [(asked, d) for asked, d in after_reset if d.generation == 0]
    assert all(d.leased for _, d in old)
    assert all(asked - reserved < 0.3 for asked, _ in old)
    assert after_reset[-1][1].generation == 1
    # Only the request that reserved the new lease counts in the new generation.
    assert counter(org) == (1, 10, 1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_leases_out_at_a_reset_never_let_the_new_generation_pass_the_quota(org):
    """Two event loops in two threads (as two server processes) hold leases of a quota of
    2,000 requests when it is reset; then each makes 1,500 admissions, of 2 tokens where the
    leases were reserved at 1 a request (their tokens run out before their requests: the
    requests left go back after the reset). What the new generation admits stays within the
    quota and is exactly what the counter holds once the leases are back; what the old leases
    admitted after the reset is no more than they held unused at the reset (it was counted
    before it)."""
    quota = 2_000
    results: list[list] = [[], []]
    held = [0, 0]
    leased = threading.Barrier(3)
    was_reset = threading.Event()
    errors: list[BaseException] = []

    def process(index: int) -> None:
        async def run():
            for _ in range(3):  # the second reserves a lease, the third comes from it
                await admit(org, requests=quota, tokens=1)
            held[index] = lease._leases().leases[(org.pk, NOV_1)].requests
            leased.wait(30)
            was_reset.wait(30)
            for _ in range(1_500):
                results[index].append(await admit(org, requests=quota, tokens=2))
            await aflush(leases=True)

        try:
            asyncio.run(run())
        except BaseException as error:
            errors.append(error)
            leased.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    leased.wait(30)
    reset(org)
    was_reset.set()
    for thread in threads:
        thread.join(120)
    assert not errors

    decisions = [d for r in results for d in r if d.allowed]
    new = [d for d in decisions if d.generation == 1]
    old = [d for d in decisions if d.generation == 0]
    assert all(held) and all(d.leased for d in old)
    assert len(old) <= sum(held)
    assert quota - quota // lease.LEASE_FRACTION <= len(new) <= quota
    assert counter(org) == (len(new), 2 * len(new), 1)
    assert (row(org).leased_requests, row(org).leased_tokens) == (0, 0)
