"""Quota leases (metering/quota/lease.py): far from its quota a process reserves a slice of it
and admits from that slice without a statement each; near the quota every request is asked
alone; the counter ends equal to what was used once the leases are given back; a lease goes
back when idle or old; a refusal that only other processes' leases cause says to retry in a
second or two. Resets while leases are out: tests/metering/test_quota_reset.py."""

import asyncio
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connections
from django.db.models import F

from metering.models import QuotaCounter
from metering.quota import (
    QuotaAsk,
    QuotaUnavailable,
    aflush,
    aquota_admit_start,
    aquota_settle,
    batched,
    lease,
)

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
    real = batched.Connections.fetchone

    async def fetchone(self, statement, params):
        row = await real(self, statement, params)
        if statement is batched.STATEMENT and params["counts"] and row is not None:
            seen.append(list(zip(params["counts"], params["estimates"], strict=True)))
        return row

    monkeypatch.setattr(batched.Connections, "fetchone", fetchone)
    return seen


@pytest.fixture(autouse=True)
def _long_idle(settings):
    settings.QUOTA_LEASE_IDLE_SECONDS = 60  # given back only when a test says so
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 60


def holds_lease(org) -> bool:
    """Whether the running loop holds a lease of the organization's November."""
    return (org.pk, NOV_1) in lease._leases().leases


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for condition() to hold: as long as the machine needs, never a fixed guess."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def admit(org, *, requests=None, tokens_limit=None, tokens=10):
    return aquota_admit_start(
        QuotaAsk(org.pk, request_limit=requests, token_limit=tokens_limit, tokens=tokens, now=NOV)
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
        reserving = await admit(org, requests=100_000)
        assert holds_lease(org)
        await until(lambda: not holds_lease(org))
        await aflush()
        return reserving

    reserving = asyncio.run(scenario())
    # The counter as the reservation's own statement left it (a read of the row afterwards
    # could come after the give-back): the lease's 64 in it while held.
    assert (reserving.requests_used, reserving.tokens_used) == (65, 650)
    assert counter(org) == (2, 20)


def _row_now(org):
    try:
        row = QuotaCounter.objects.get(organization=org, period=NOV_1)
        return row.requests, row.leased_requests, row.leased_tokens, row.leased_until
    finally:
        connections.close_all()


def test_a_lease_is_in_the_leased_columns_until_given_back(org):
    async def scenario():
        await admit(org, requests=100_000)
        await admit(org, requests=100_000)
        loop = asyncio.get_running_loop()
        held = await loop.run_in_executor(None, _row_now, org)
        await aflush(leases=True)
        return held, await loop.run_in_executor(None, _row_now, org)

    held, back = asyncio.run(scenario())
    # Reserved: 64 requests and 640 tokens, of which the reserving request took 1 and 10.
    assert held == (65, 63, 630, NOV + timedelta(seconds=60 + 1))
    assert back[:3] == (2, 0, 0)


def test_a_busy_lease_goes_back_at_its_max_age_and_a_new_one_is_reserved(org, settings, statements):
    """Never idle (a request every 20 ms), the lease still goes back once
    QUOTA_LEASE_MAX_AGE_SECONDS old, before it is spent."""
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 0.3

    async def scenario():
        await admit(org, requests=100_000)
        await admit(org, requests=100_000)  # reserves the lease
        reserved_at = time.monotonic()
        statements.clear()
        for _ in range(5):  # from the lease at once: no statement, no wait
            await admit(org, requests=100_000)
        admitted = 5
        while not statements:
            assert time.monotonic() - reserved_at < 10, "the lease never went back"
            await asyncio.sleep(0.02)
            await admit(org, requests=100_000)
            admitted += 1
        age = time.monotonic() - reserved_at
        await aflush(leases=True)
        return admitted, age

    admitted, age = asyncio.run(scenario())
    assert age >= 0.3
    # All but the last came from the old lease, which was not spent when it went back.
    assert 5 <= admitted - 1 < 63
    assert statements[0] == [(64, 640)]  # the next reservation
    assert counter(org) == (2 + admitted, 10 * (2 + admitted))


def test_a_lease_past_its_max_age_admits_nothing_more(org, settings, statements):
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 0  # every lease is too old for the next request

    async def scenario():
        await admit(org, requests=100_000)
        first = await admit(org, requests=100_000)
        second = await admit(org, requests=100_000)
        await aflush(leases=True)
        return first, second

    first, second = asyncio.run(scenario())
    # Each request reserves a new lease: the old one went back (with the new reservation's
    # statement, or alone by its timer).
    assert statements == [[(1, 10)], [(64, 640)], [(64, 640)]]
    assert first.leased and second.leased
    assert second.requests_used == 1 + 1 + 64
    assert counter(org) == (3, 30)


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


def test_near_the_quota_a_refusal_while_another_process_holds_a_lease_says_retry_in_seconds(
    org, settings
):
    """Process A holds a lease when the rest of the quota is spent: process B is refused, but
    with the leases' Retry-After (max age + 1 s), not the month's end; once A gives its lease
    back, B is admitted."""
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 1
    held = threading.Event()
    give_back = threading.Event()

    def process_a() -> None:
        async def run():
            await admit(org, requests=1_000)
            await admit(org, requests=1_000)  # a lease of 999 // 64 = 15
            held.set()
            give_back.wait(30)  # blocks this loop: its timers cannot give the lease back
            await aflush(leases=True)

        try:
            asyncio.run(run())
        finally:
            connections.close_all()

    async def process_b():
        return await admit(org, requests=1_000)

    a = threading.Thread(target=process_a)
    a.start()
    try:
        assert held.wait(30)
        # Others spend what remains: 2 used and 14 in A's lease, 984 more.
        QuotaCounter.objects.filter(organization=org).update(requests=F("requests") + 984)
        refused = asyncio.run(process_b())
    finally:
        give_back.set()
        a.join(30)
    assert not refused.allowed and refused.exceeded == "requests"
    assert refused.retry_after == 2
    assert refused.resets_at == datetime(2026, 12, 1, tzinfo=UTC)  # the month's end, still
    admitted = asyncio.run(process_b())
    assert admitted.allowed
    assert counter(org) == (987, 30)  # 984, and A's 2 and B's 1 requests of 10 tokens


@pytest.fixture
def slow_reservations(monkeypatch):
    """A statement reserving a lease takes 0.6 s more (a loaded database: lock waits on the
    organization's row); the asks statements carried are recorded as they ran, as by
    `statements`."""
    seen: list[list[tuple[int, int]]] = []
    real = batched.Connections.fetchone

    async def fetchone(self, statement, params):
        if any(params.get("lcounts", ())):
            await asyncio.sleep(0.6)
        row = await real(self, statement, params)
        if statement is batched.STATEMENT and params["counts"] and row is not None:
            seen.append(list(zip(params["counts"], params["estimates"], strict=True)))
        return row

    monkeypatch.setattr(batched.Connections, "fetchone", fetchone)
    return seen


def test_a_burst_on_a_slow_database_is_served_by_one_lease_even_past_its_max_age(
    org, settings, slow_reservations
):
    """The reservation takes longer than QUOTA_LEASE_MAX_AGE_SECONDS: the lease's age counts
    from when it came back, so the requests waiting for it take from it, instead of finding
    it expired and reserving one lease after another."""
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 0.3

    async def scenario():
        await admit(org, requests=1_000_000)
        slow_reservations.clear()
        decisions = await asyncio.gather(*(admit(org, requests=1_000_000) for _ in range(20)))
        await aflush(leases=True)
        return decisions

    decisions = asyncio.run(scenario())
    assert all(d.allowed and d.leased for d in decisions)
    assert slow_reservations == [[(64, 640)]]
    assert counter(org) == (21, 210)


def test_requests_waiting_for_a_lease_that_expired_on_arrival_are_asked_together(
    org, settings, statements
):
    settings.QUOTA_LEASE_MAX_AGE_SECONDS = 0  # every lease is too old for the next request

    async def scenario():
        await admit(org, requests=100_000)
        statements.clear()
        decisions = await asyncio.gather(*(admit(org, requests=100_000) for _ in range(20)))
        await aflush(leases=True)
        return decisions

    decisions = asyncio.run(scenario())
    assert all(d.allowed for d in decisions)
    # The first reserved a lease; the 19 waiting for it found it expired and were asked alone,
    # in one statement, not each reserving a lease in turn.
    assert statements == [[(64, 640)], [(1, 10)] * 19]
    assert counter(org) == (21, 210)


@pytest.mark.parametrize("fail_open", [False, True])
def test_requests_waiting_for_a_reservation_that_failed_fail_with_it_at_once(
    org, settings, monkeypatch, fail_open
):
    """The database went away: the burst's reservation fails (its connection cannot be made),
    and the requests waiting for it get its outcome (503, or admitted unmetered with
    QUOTA_FAIL_OPEN) without trying again one after the other, a connect timeout each."""
    settings.QUOTA_FAIL_OPEN = fail_open
    settings.QUOTA_DB_TIMEOUT_SECONDS = 1
    tried: list[str] = []
    real = batched.Connections.fetchone

    async def fetchone(self, statement, params):
        tried.append("statement")
        return await real(self, statement, params)

    monkeypatch.setattr(batched.Connections, "fetchone", fetchone)
    database = connections["default"].settings_dict
    saved = database["PORT"]

    async def scenario():
        await admit(org, requests=100_000)  # figures seen: the next ones lease
        batched._combiners.current().connections.finish_all()  # a new connection is needed...
        database["PORT"] = "1"  # ...and cannot be made
        tried.clear()
        return await asyncio.gather(
            *(admit(org, requests=100_000) for _ in range(20)), return_exceptions=True
        )

    try:
        outcomes = asyncio.run(scenario())
    finally:
        database["PORT"] = saved
        batched.close_all()
    assert tried == ["statement"]
    if fail_open:
        assert all(d.allowed and not d.counted for d in outcomes)
    else:
        assert all(isinstance(outcome, QuotaUnavailable) for outcome in outcomes)
    assert counter(org) == (1, 10)


def test_a_reservation_refused_because_others_spent_the_room_asks_its_requests_alone(
    org, statements
):
    """Another process spent what remains since this loop's last figures: the lease's
    reservation does not fit, and its request and those waiting for it are asked alone (the
    room left admits some of them), not refused with it."""

    async def scenario():
        await admit(org, requests=1_000)  # 999 remain: leases of 999 // 64 = 15
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _spend, org, 989)  # 10 remain
        statements.clear()
        decisions = await asyncio.gather(*(admit(org, requests=1_000) for _ in range(20)))
        await aflush(leases=True)
        return decisions

    decisions = asyncio.run(scenario())
    assert statements[0] == [(15, 150)]  # refused
    assert sorted(len(asks) for asks in statements[1:]) in ([20], [1, 19])  # then alone
    assert sum(d.allowed for d in decisions) == 10
    assert {d.exceeded for d in decisions if not d.allowed} == {"requests"}
    assert not any(d.leased for d in decisions)
    assert counter(org) == (1_000, 110)


def _spend(org, requests: int) -> None:
    try:
        QuotaCounter.objects.filter(organization=org).update(requests=F("requests") + requests)
    finally:
        connections.close_all()
