"""The monthly quota's PostgreSQL path for async code (metering/quota/batched.py): admissions
and settlements of one organization-month made concurrently on one event loop go to the
database in one statement, with the semantics of admitting them one by one; a settlement is
applied once whatever fails after it, and a statement lost with its connection never gives
quota away."""

import asyncio
import logging
from datetime import UTC, date, datetime

import psycopg
import pytest
from django.db import connection, connections

from metering.models import QuotaCounter
from metering.quota import (
    QuotaAsk,
    QuotaUnavailable,
    aflush,
    aquota_admit_start,
    aquota_settle,
    batched,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

NOV = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
NOV_1 = date(2026, 11, 1)


def counter(org, period=NOV_1):
    row = QuotaCounter.objects.filter(organization=org, period=period).first()
    return None if row is None else (row.requests, row.tokens)


@pytest.fixture
def statements(monkeypatch):
    """The statements the quota's connections run, as they run (an observer, not a stand-in)."""
    seen: list[str] = []
    real = batched.Connections.fetchone

    async def fetchone(self, statement, params):
        seen.append("admit" if statement is batched.STATEMENT else "insert")
        return await real(self, statement, params)

    monkeypatch.setattr(batched.Connections, "fetchone", fetchone)
    return seen


def admit(org, *, requests=None, tokens_limit=None, tokens=1, now=NOV):
    return aquota_admit_start(
        QuotaAsk(org.pk, request_limit=requests, token_limit=tokens_limit, tokens=tokens, now=now)
    )


def test_concurrent_admissions_of_one_organization_share_one_statement(org, statements):
    async def scenario():
        await admit(org, requests=100)  # the month's row exists now
        statements.clear()
        return await asyncio.gather(*(admit(org, requests=100, tokens=3) for _ in range(40)))

    decisions = asyncio.run(scenario())
    assert all(d.allowed for d in decisions)
    # Issued together, before the loop ran the flush the first one started: one statement.
    assert statements == ["admit"]
    assert sorted(d.requests_used for d in decisions) == list(range(2, 42))
    assert counter(org) == (41, 121)


def test_a_batch_is_admitted_as_one_by_one_admissions_would_be(org):
    """A request that does not fit is refused and the later, smaller ones still fit."""

    async def scenario():
        return await asyncio.gather(
            admit(org, tokens_limit=20, tokens=5),
            admit(org, tokens_limit=20, tokens=500),
            admit(org, tokens_limit=20, tokens=5),
            admit(org, tokens_limit=20, tokens=11),
            admit(org, tokens_limit=20, tokens=10),
        )

    decisions = asyncio.run(scenario())
    assert [d.allowed for d in decisions] == [True, False, True, False, True]
    assert [d.tokens_used for d in decisions] == [5, 5, 10, 10, 20]
    assert {d.exceeded for d in decisions if not d.allowed} == {"tokens"}
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)
    assert counter(org) == (3, 20)


def test_a_request_limit_admits_exactly_up_to_it_in_one_batch(org):
    async def scenario():
        return await asyncio.gather(*(admit(org, requests=7) for _ in range(20)))

    decisions = asyncio.run(scenario())
    assert sum(d.allowed for d in decisions) == 7
    assert [d.allowed for d in decisions] == [True] * 7 + [False] * 13
    assert {d.exceeded for d in decisions if not d.allowed} == {"requests"}
    assert counter(org) == (7, 7)


def test_the_first_request_of_a_month_creates_its_row(org, statements):
    async def scenario():
        november = await admit(org, requests=10)
        december = await admit(org, requests=10, now=DEC)
        return november, december

    november, december = asyncio.run(scenario())
    assert statements == ["admit", "insert", "admit", "admit", "insert", "admit"]
    assert (november.period, december.period) == (NOV_1, date(2026, 12, 1))
    assert december.requests_used == 1
    assert counter(org) == (1, 1)
    assert counter(org, date(2026, 12, 1)) == (1, 1)


def test_settlements_ride_with_the_next_statement_and_aflush_waits_for_them(org, statements):
    async def scenario():
        first = await admit(org, tokens_limit=1000, tokens=100)
        statements.clear()
        await aquota_settle(org.pk, period=first.period, token_delta=-60, wait=False)
        await aquota_settle(org.pk, period=first.period, token_delta=-20, wait=False)
        second = await admit(org, tokens_limit=1000, tokens=100)
        await aflush()
        return second

    second = asyncio.run(scenario())
    # Both settlements and the admission were pending when the flush ran: one statement.
    assert statements == ["admit"]
    assert second.tokens_used == 100 - 60 - 20 + 100
    assert type(second.tokens_used) is int and type(second.requests_used) is int
    assert counter(org) == (2, 120)


def test_settlement_waits_when_asked_and_never_goes_below_zero(org):
    async def scenario():
        first = await admit(org, tokens_limit=1000, tokens=10)
        await aquota_settle(org.pk, period=first.period, token_delta=-50, request_delta=-5)

    asyncio.run(scenario())
    assert counter(org) == (0, 0)


def test_different_limits_in_one_batch_each_get_their_own_statement(org, statements):
    """A plan change while requests are in flight: each keeps the limits it was admitted on."""

    async def scenario():
        await admit(org, requests=100)
        statements.clear()
        return await asyncio.gather(
            admit(org, requests=100), admit(org, requests=2), admit(org, requests=100)
        )

    decisions = asyncio.run(scenario())
    # One statement per set of limits, in the order of their first request: the two with 100
    # make 3, then the one with 2 does not fit.
    assert statements == ["admit", "admit"]
    assert [d.allowed for d in decisions] == [True, False, True]
    assert counter(org) == (3, 3)


def test_organizations_are_batched_apart(org, other_org):
    async def scenario():
        return await asyncio.gather(
            *(admit(o, requests=3) for o in (org, other_org) for _ in range(5))
        )

    decisions = asyncio.run(scenario())
    assert sum(d.allowed for d in decisions) == 6
    assert counter(org) == (3, 3) and counter(other_org) == (3, 3)


def _backend_pid_of_kept_connection() -> int:
    combiner = batched._combiners.current()
    return combiner.connections.idle[0].info.backend_pid


def _terminate(pid: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    finally:
        connections.close_all()


def test_a_kept_connection_that_died_is_replaced_at_once(org, caplog):
    """Between requests the server dropped the idle connection (restart, idle timeout): the next
    admission reconnects instead of failing, and logs nothing."""

    async def scenario():
        loop = asyncio.get_running_loop()
        await admit(org, requests=10)
        first = _backend_pid_of_kept_connection()
        await loop.run_in_executor(None, _terminate, first)
        decision = await admit(org, requests=10)
        await aquota_settle(org.pk, period=NOV_1, token_delta=3)
        return first, _backend_pid_of_kept_connection(), decision

    with caplog.at_level(logging.WARNING, logger="metering.quota"):
        first, second, decision = asyncio.run(scenario())
    assert decision.allowed and decision.requests_used == 2
    assert second != first
    assert not caplog.records
    assert counter(org) == (2, 5)


@pytest.fixture
def unreachable_database(settings):
    """The quota's connections go to a port where no server listens."""
    database = connections["default"].settings_dict
    saved = database["PORT"]
    batched.close_all()
    database["PORT"] = "1"
    settings.QUOTA_DB_TIMEOUT_SECONDS = 1
    yield
    database["PORT"] = saved
    batched.close_all()


def test_an_unreachable_database_refuses_by_default(org, unreachable_database, caplog):
    async def scenario():
        with pytest.raises(QuotaUnavailable):
            await admit(org, requests=10)

    with caplog.at_level(logging.ERROR, logger="metering.quota"):
        asyncio.run(scenario())
    assert "request refused" in caplog.text


def test_an_unreachable_database_admits_unmetered_when_fail_open(
    org, unreachable_database, settings, caplog
):
    settings.QUOTA_FAIL_OPEN = True

    async def scenario():
        return await admit(org, requests=10)

    with caplog.at_level(logging.ERROR, logger="metering.quota"):
        decision = asyncio.run(scenario())
    assert decision.allowed and not decision.counted
    assert "admitted unmetered" in caplog.text


def test_a_failed_settlement_stays_pending_for_the_next_statement(org, settings):
    async def scenario():
        first = await admit(org, tokens_limit=1000, tokens=100)
        database = connections["default"].settings_dict
        saved = database["PORT"]
        combiner = batched._combiners.current()
        combiner.connections.finish_all()  # the next statement needs a new connection...
        database["PORT"] = "1"  # ...which cannot be made
        settings.QUOTA_DB_TIMEOUT_SECONDS = 1
        try:
            with pytest.raises(QuotaUnavailable):
                await aquota_settle(org.pk, period=first.period, token_delta=-40)
        finally:
            database["PORT"] = saved
        return await admit(org, tokens_limit=1000, tokens=100)

    second = asyncio.run(scenario())
    assert second.tokens_used == 160
    assert counter(org) == (2, 160)


def test_aclose_flushes_and_closes_the_loops_connections(org):
    async def scenario():
        decision = await admit(org, tokens_limit=1000, tokens=10)
        await aquota_settle(org.pk, period=decision.period, token_delta=5, wait=False)
        combiner = batched._combiners.current()
        conns = set(combiner.connections.all)
        await batched.aclose()
        return conns

    conns = asyncio.run(scenario())
    assert conns and all(c.closed for c in conns)
    assert counter(org) == (1, 15)


def ask(org, *, requests=None, tokens_limit=None, tokens=1):
    """An admission queued with the combiner itself (no lease), now: its future."""
    return batched.admit_start(
        QuotaAsk(org.pk, request_limit=requests, token_limit=tokens_limit, tokens=tokens, now=NOV)
    )


def test_a_settlement_is_applied_once_when_a_later_statement_of_its_flush_fails(org, monkeypatch):
    """A plan change splits a flush in two statements; the settlements ride with the first.
    When the second fails, they are not sent again with the organization's next statement."""
    real = batched.Connections.fetchone
    calls = {"made": 0, "fail": None}

    async def fetchone(self, statement, params):
        calls["made"] += 1
        if calls["made"] == calls["fail"]:
            raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        return await real(self, statement, params)

    monkeypatch.setattr(batched.Connections, "fetchone", fetchone)

    async def scenario():
        first = await ask(org, requests=10, tokens=1000)
        calls["fail"] = calls["made"] + 2  # the flush's second statement
        settled = batched.settle_start(
            org.pk, period=NOV_1, token_delta=-900, request_delta=0, generation=first.generation
        )
        old_plan = ask(org, requests=10, tokens=0)
        new_plan = ask(org, requests=20, tokens=0)
        outcomes = await asyncio.gather(settled, old_plan, new_plan, return_exceptions=True)
        after = await ask(org, requests=10, tokens=0)
        await aflush()
        return outcomes, after

    (settled, old_plan, new_plan), after = asyncio.run(scenario())
    assert settled is None  # applied, and its waiter told so
    assert old_plan.allowed
    assert isinstance(new_plan, QuotaUnavailable)
    # 1000 estimated, 100 used: the -900 applied once.
    assert (after.requests_used, after.tokens_used) == (3, 100)
    assert counter(org) == (3, 100)


def test_a_kept_connection_closed_while_idle_is_replaced_before_anything_is_sent_on_it(org, caplog):
    """The server ended the idle connection: that is seen before the statement is sent, so the
    give-back riding with it is applied (it is not a statement lost with its connection)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        await ask(org, tokens_limit=1000, tokens=100)
        await loop.run_in_executor(None, _terminate, _backend_pid_of_kept_connection())
        await aquota_settle(org.pk, period=NOV_1, token_delta=-40, wait=False)
        return await ask(org, tokens_limit=1000, tokens=100)

    with caplog.at_level(logging.WARNING, logger="metering.quota"):
        second = asyncio.run(scenario())
    assert second.tokens_used == 160
    assert not caplog.records
    assert counter(org) == (2, 160)


_READY_FOR_QUERY_IDLE = b"Z\x00\x00\x00\x05I"  # a reply's end, its transaction over
_UPDATED = b"UPDATE 1\x00"  # the quota statement's CommandComplete


class _Relay:
    """A TCP relay between the quota's connections and PostgreSQL, on the test's loop: the
    network between them. Once `cut` is set, the server's next reply to a quota statement that
    updated the row (committed: up to its ReadyForQuery) is swallowed and the client's
    connection closed; other replies (a statement's preparation) go through."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.cut = False
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()
        self.serving: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        for transport in self.transports:
            transport.abort()
        await asyncio.gather(*self.serving, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self.serving.add(asyncio.current_task())
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.transports |= {writer.transport, up_writer.transport}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._replies(up_reader, writer))
        except OSError:
            pass  # one side went away: so does the other
        finally:
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(self, reader, writer) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        raise ConnectionResetError("closed")

    async def _replies(self, reader, writer) -> None:
        held = b""
        while data := await reader.read(65536):
            if not self.cut:
                writer.write(data)
                await writer.drain()
                continue
            held += data
            if not held.endswith(_READY_FOR_QUERY_IDLE):
                continue
            if _UPDATED in held:
                self.cut = False
                raise ConnectionAbortedError("cut after the commit")
            writer.write(held)
            held = b""
            await writer.drain()
        raise ConnectionResetError("closed")


@pytest.fixture
def relay():
    """The quota's connections go through a _Relay, started on the test's loop by `async with
    relay:`."""
    database = connections["default"].settings_dict
    saved = database["HOST"], database["PORT"], dict(database["OPTIONS"])
    batched.close_all()
    relay = _Relay(saved[0] or "127.0.0.1", int(saved[1] or 5432))

    class Running:
        async def __aenter__(self):
            database["HOST"], database["PORT"] = "127.0.0.1", str(await relay.start())
            database["OPTIONS"]["sslmode"] = "disable"  # bytes the relay can read
            return relay

        async def __aexit__(self, *exc_info):
            database["HOST"], database["PORT"], database["OPTIONS"] = saved
            await batched.aclose()
            await relay.stop()

    yield Running()
    database["HOST"], database["PORT"], database["OPTIONS"] = saved
    batched.close_all()


def test_a_statement_lost_after_its_commit_never_gives_back_twice(org, relay, caplog):
    """The connection breaks after the statement committed, before its reply: it runs once
    more on a new connection, but without the give-back it carried (applied by the lost one:
    applying it again would give quota away); an addition runs again (quota lost)."""

    async def scenario():
        async with relay as network:
            first = await ask(org, tokens_limit=10_000, tokens=1000)
            network.cut = True  # the next statement commits and its reply never comes
            await aquota_settle(
                org.pk, period=NOV_1, token_delta=-900, generation=first.generation, wait=False
            )
            await aquota_settle(org.pk, period=NOV_1, token_delta=50, wait=False)
            second = await ask(org, tokens_limit=10_000, tokens=0)
            await aflush()
            return second

    with caplog.at_level(logging.WARNING, logger="metering.quota"):
        second = asyncio.run(scenario())
    assert second.allowed
    # The lost statement: 1000 - 900 + 50, and the request. Its re-run: +50, the request.
    assert counter(org) == (3, 200)
    assert "give back 0 requests and 900 tokens; dropped" in caplog.text
