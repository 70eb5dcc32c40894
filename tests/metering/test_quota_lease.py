"""Quota leases (metering/quota/lease.py): far from its quota a process reserves a slice of it
and admits from that slice without a statement each; near the quota every request is asked
alone; the counter ends equal to what was used once the leases are given back."""

import asyncio
import threading
from datetime import UTC, date, datetime

import pytest
from django.db import connections

from metering.models import QuotaCounter
from metering.quota import aflush, aquota_admit, aquota_settle, batched, lease

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

NOV = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
NOV_1 = date(2026, 11, 1)


def counter(org):
    row = QuotaCounter.objects.filter(organization=org, period=NOV_1).first()
    return None if row is None else (row.requests, row.tokens)


@pytest.fixture
def statements(monkeypatch):
    """The asks the quota's statements carried, (requests, tokens) each, as they ran (a
    month's first statement, which finds no row yet and runs again, is seen once)."""
    seen: list[list[tuple[int, int]]] = []
    real = batched._Connections.fetchone

    async def fetchone(self, statement, params):
        row = await real(self, statement, params)
        if statement is batched._STATEMENT and params["counts"] and row is not None:
            seen.append(list(zip(params["counts"], params["estimates"], strict=True)))
        return row

    monkeypatch.setattr(batched._Connections, "fetchone", fetchone)
    return seen


@pytest.fixture(autouse=True)
def _long_idle(settings):
    settings.QUOTA_LEASE_IDLE_SECONDS = 60  # given back only when a test says so


def admit(org, *, requests=None, tokens_limit=None, tokens=10):
    return aquota_admit(
        org.pk, request_limit=requests, token_limit=tokens_limit, tokens=tokens, now=NOV
    )


def test_far_from_the_quota_requests_come_from_a_lease_without_statements(org, statements):
    async def scenario():
        first = await admit(org, requests=100_000, tokens_limit=10**9)  # no figures seen yet
        second = await admit(org, requests=100_000, tokens_limit=10**9)  # reserves a lease
        asks = list(statements)
        statements.clear()
        leased = [await admit(org, requests=100_000, tokens_limit=10**9) for _ in range(63)]
        in_lease = list(statements)
        after = await admit(org, requests=100_000, tokens_limit=10**9)  # the lease is spent
        await aflush(leases=True)
        return first, second, asks, leased, in_lease, after

    first, second, asks, leased, in_lease, after = asyncio.run(scenario())
    assert asks == [[(1, 10)], [(64, 640)]]
    assert not first.leased and second.leased
    assert in_lease == []  # 63 requests, no statement
    assert all(d.allowed and d.leased for d in leased)
    assert after.allowed and after.leased
    # Given back: the counter holds what was used, 1 + 64 + 1 requests of 10 tokens.
    assert counter(org) == (66, 660)


def test_near_the_quota_every_request_is_asked_alone(org, statements):
    async def scenario():
        return [await admit(org, requests=100) for _ in range(101)]

    decisions = asyncio.run(scenario())
    assert sum(d.allowed for d in decisions) == 100
    assert not any(d.leased for d in decisions)
    assert statements == [[(1, 10)]] * 101
    assert counter(org) == (100, 1000)


def test_a_lease_is_sized_from_what_remains(org, statements):
    async def scenario():
        await admit(org, requests=1_000)  # 999 remain: a lease of 999 // 64 = 15
        await admit(org, requests=1_000)
        await aflush(leases=True)

    asyncio.run(scenario())
    assert statements == [[(1, 10)], [(15, 150)]]


def test_settlements_of_leased_requests_go_into_the_lease(org):
    async def scenario():
        await admit(org, requests=100_000, tokens=100)
        leased = [await admit(org, requests=100_000, tokens=100) for _ in range(5)]
        for decision in leased:  # each used 40 tokens, not the 100 estimated
            await aquota_settle(
                org.pk, period=decision.period, token_delta=-60, leased=decision.leased, wait=False
            )
        await aflush(leases=True)
        return leased

    leased = asyncio.run(scenario())
    assert all(d.leased for d in leased)
    assert counter(org) == (6, 100 + 5 * 40)


def test_an_idle_lease_goes_back_by_itself(org, settings):
    settings.QUOTA_LEASE_IDLE_SECONDS = 0.1

    async def scenario():
        await admit(org, requests=100_000)
        await admit(org, requests=100_000)
        reserved = await asyncio.get_running_loop().run_in_executor(None, _counter_now, org)
        await asyncio.sleep(0.4)
        await aflush()
        return reserved

    reserved = asyncio.run(scenario())
    assert reserved == (65, 650)  # the lease's 64, in the counter while held
    assert counter(org) == (2, 20)


def _counter_now(org):
    try:
        return counter(org)
    finally:
        connections.close_all()


def test_a_plan_change_gives_the_lease_back(org):
    async def scenario():
        await admit(org, requests=100_000)
        await admit(org, requests=100_000)  # a lease under the old limits
        await admit(org, requests=50_000)  # new limits: the old lease goes back
        await aflush(leases=True)

    asyncio.run(scenario())
    assert counter(org) == (3, 30)


def test_leases_of_two_processes_never_let_the_quota_pass(org):
    """Two event loops in two threads (as two server processes) hammer a quota of 2,000 with
    1,500 admissions each."""
    results: list[list] = [[], []]
    barrier = threading.Barrier(2)

    def process(index: int) -> None:
        async def run():
            barrier.wait(10)
            for _ in range(1_500):
                results[index].append(await admit(org, requests=2_000, tokens=1))
            await aflush(leases=True)

        try:
            asyncio.run(run())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    admitted = sum(d.allowed for r in results for d in r)
    assert admitted <= 2_000
    # What one process held unused while the other was refused: at most one lease's worth.
    assert admitted >= 2_000 - 2_000 // lease.LEASE_FRACTION
    assert any(d.leased for r in results for d in r)
    assert counter(org) == (admitted, admitted)


def test_requests_arriving_while_a_lease_is_reserved_wait_for_it(org, statements):
    async def scenario():
        await admit(org, requests=100_000)  # figures seen: the next ones may lease
        statements.clear()
        decisions = await asyncio.gather(*(admit(org, requests=100_000) for _ in range(40)))
        await aflush(leases=True)
        return decisions

    decisions = asyncio.run(scenario())
    assert all(d.allowed for d in decisions)
    # One reservation of 64 serves all 40, not 40 reservations.
    assert statements == [[(64, 640)]]
    assert counter(org) == (41, 410)


def test_a_burst_is_served_by_a_lease_sized_to_the_requests_waiting(org, statements):
    async def scenario():
        await admit(org, requests=1_000_000)
        statements.clear()
        decisions = await asyncio.gather(*(admit(org, requests=1_000_000) for _ in range(200)))
        await aflush(leases=True)
        return decisions

    decisions = asyncio.run(scenario())
    assert all(d.allowed for d in decisions)
    # The first reserves the usual 64; the 199 that came meanwhile wait for it, 63 of them
    # fit, and the next one reserves for itself and the 135 still waiting: two statements.
    assert statements == [[(64, 640)], [(136, 1360)]]
    assert counter(org) == (201, 2010)
