"""The monthly quota on PostgreSQL from the event loop: the gateway's path (metering/quota/
__init__.py sends aquota_admit and aquota_settle here when the database is PostgreSQL).

The rule is counter.py's: one conditional statement on the organization's row for the month,
under the row's lock, so the quota is never exceeded whatever the number of processes; lazy
rollover; rows of past months kept. Two things differ.

1. No thread hop and no Django connection: psycopg's AsyncConnection on the event loop, a few
   per loop (QUOTA_DB_CONNECTIONS, default 4), autocommit, opened on first use with the
   `default` database's settings (`DatabaseWrapper.get_connection_params()`), each with
   `statement_timeout` = QUOTA_DB_TIMEOUT_SECONDS (default 5) and the statement prepared
   (QUOTA_DB_PREPARED, default on).
   Not psycopg_pool: its pools run background tasks on the loop that opened them, and this
   process opens loops of its own (tests, async_to_sync) that close under them.

2. One statement for many requests. An organization's counter is one row, and each statement
   holds its lock until its commit is flushed to the WAL: measured here (pgbench, one row,
   synchronous_commit on) 0.44 ms a statement at concurrency 1 and 1,600 statements/s at 32
   with nothing else running. A statement to admit each request and another to settle it would
   cap one organization below the gateway's throughput. So, per event loop and
   organization-month, a combiner: the first admission or settlement starts a flush at once
   (at concurrency 1 nothing waits), and what arrives while a flush runs goes in the next one.
   One flush is one statement (`_STATEMENT`): the row, locked, with the pending settlements
   applied; then the batch walked in arrival order by a recursive CTE, each request admitted
   if it fits on the figures the ones before it left, exactly as admitting them one by one;
   then the final figures written and every step returned. Settlements (actual tokens minus the
   estimate) ride with the next flush: a request does not wait for its own
   (`settle_start`); `aquota_settle` waits for them unless told not to.

A month without a row gets one (INSERT ... ON CONFLICT DO NOTHING) and the statement runs again.

Errors: a statement that fails on a connection that was kept idle (server restart, idle timeout)
is tried once more on a new one (had the lost one been applied after all, the request counts
twice: quota lost, never given away). Other failures make every admission of the batch
counter.unavailable(): the gateway's 503, or an unmetered admission with QUOTA_FAIL_OPEN; the
batch's settlements stay pending for the next flush.
"""

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from aibaas.loops import PerLoop, quiet_future
from metering.quota.counter import (
    QuotaDecision,
    QuotaUnavailable,
    decision_for,
    exceeded_limit,
    period_for,
    unavailable,
    utc,
)

logger = logging.getLogger(__name__)

DEFAULT_CONNECTIONS = 4
DEFAULT_TIMEOUT_SECONDS = 5.0

# %(dr)s / %(dt)s: pending settlements (requests, tokens), applied first, never below 0.
# %(counts)s / %(estimates)s: the batch's asks in arrival order, each a number of requests (1,
# or a lease's reservation: lease.py) and their tokens; a step admits an ask when it fits:
# requests + count <= %(rl)s and tokens + max(estimate, 1) <= %(tl)s (NULL = no limit; an
# estimate of 0 is checked as 1, as in counter.py).
_FITS = (
    "(%(rl)s::bigint IS NULL OR walk.r + est.n <= %(rl)s::bigint) AND "
    "(%(tl)s::bigint IS NULL OR walk.t + greatest(est.v, 1) <= %(tl)s::bigint)"
)
_STATEMENT = f"""
WITH RECURSIVE
cur AS (
    SELECT id, greatest(requests + %(dr)s::bigint, 0) AS r,
           greatest(tokens + %(dt)s::bigint, 0) AS t
    FROM metering_quotacounter
    WHERE organization_id = %(org)s AND period = %(period)s
    FOR UPDATE
),
est AS (
    SELECT ord::int AS ord, n, v
    FROM unnest(%(counts)s::bigint[], %(estimates)s::bigint[]) WITH ORDINALITY AS u(n, v, ord)
),
walk AS (
    SELECT 0 AS ord, r, t, true AS ok FROM cur
    UNION ALL
    SELECT est.ord,
           walk.r + CASE WHEN {_FITS} THEN est.n ELSE 0 END,
           walk.t + CASE WHEN {_FITS} THEN est.v ELSE 0 END,
           {_FITS}
    FROM walk JOIN est ON est.ord = walk.ord + 1
),
last AS (SELECT r, t FROM walk ORDER BY ord DESC LIMIT 1),
steps AS (
    SELECT array_agg(ok ORDER BY ord) AS ok, array_agg(r ORDER BY ord) AS r,
           array_agg(t ORDER BY ord) AS t
    FROM walk WHERE ord > 0
)
UPDATE metering_quotacounter AS q
SET requests = last.r, tokens = last.t, updated_at = %(now)s
FROM cur, last, steps
WHERE q.id = cur.id
RETURNING steps.ok, steps.r, steps.t
"""  # noqa: S608 (constant SQL: every value is bound by the driver)
_INSERT = (
    "INSERT INTO metering_quotacounter (organization_id, period, requests, tokens, updated_at) "
    "VALUES (%(org)s, %(period)s, 0, 0, %(now)s) ON CONFLICT (organization_id, period) DO NOTHING"
)


# --- connections ------------------------------------------------------------------------------


def _connection_params() -> dict:
    params = connections[DEFAULT_DB_ALIAS].get_connection_params()
    for name in ("cursor_factory", "context"):  # Django's sync cursor and adapters
        params.pop(name, None)
    params["autocommit"] = True
    # Prepared on first use: the statement's plan costs ~0.4 ms to make each time (measured
    # here: 0.88 ms a statement unprepared, 0.46 ms prepared). Off behind a transaction-mode
    # PgBouncer older than 1.21 (QUOTA_DB_PREPARED=False), as Django's own connections are.
    params["prepare_threshold"] = 0 if getattr(settings, "QUOTA_DB_PREPARED", True) else None
    timeout = float(getattr(settings, "QUOTA_DB_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
    params.setdefault("connect_timeout", max(1, round(timeout)))
    options = f"{params.get('options', '')} -c statement_timeout={int(timeout * 1000)}"
    params["options"] = options.strip()
    return params


class _Connections:
    """The quota's connections of one event loop: at most `size` at once, idle ones kept."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection] = []
        self.all: set[psycopg.AsyncConnection] = set()

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(**_connection_params())
        self.all.add(conn)
        return conn

    def discard(self, conn: psycopg.AsyncConnection) -> None:
        self.all.discard(conn)
        _finish(conn)

    async def fetchone(self, statement: str, params: dict) -> tuple | None:
        async with self.slots:
            kept = bool(self.idle)
            conn = self.idle.pop() if kept else await self._connect()
            try:
                try:
                    row = await _fetchone(conn, statement, params)
                except psycopg.OperationalError:
                    if not kept or not conn.broken:  # a timeout or a fresh connection failing
                        raise
                    self.discard(conn)  # it died while idle: once more, on a new one
                    conn = await self._connect()
                    row = await _fetchone(conn, statement, params)
            except BaseException:
                self.discard(conn)  # its state is unknown (error, cancellation mid-statement)
                raise
            self.idle.append(conn)
            return row

    def finish_all(self) -> None:
        for conn in list(self.all):
            _finish(conn)
        self.all.clear()
        self.idle.clear()


async def _fetchone(conn: psycopg.AsyncConnection, statement: str, params: dict):
    cursor = await conn.execute(statement, params)
    return await cursor.fetchone() if cursor.description else None


def _finish(conn: psycopg.AsyncConnection) -> None:
    """Close without the event loop (its loop may be closed already): libpq's PQfinish."""
    with suppress(Exception):  # closing a connection that is already gone
        conn.pgconn.finish()


# --- the combiner -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Ask:
    estimate: int
    count: int  # requests: 1, or a lease's reservation
    request_limit: int | None
    token_limit: int | None
    now: datetime
    future: asyncio.Future


@dataclass(slots=True)
class _Month:
    """What one organization-month of one loop waits to send."""

    asks: list[_Ask] = field(default_factory=list)
    request_delta: int = 0
    token_delta: int = 0
    waiters: list[asyncio.Future] = field(default_factory=list)
    task: asyncio.Task | None = None

    def has_work(self) -> bool:
        return bool(self.asks or self.request_delta or self.token_delta)


class _Combiner:
    """The quota's state on one event loop: its connections and its pending months."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections = _Connections(
            int(getattr(settings, "QUOTA_DB_CONNECTIONS", DEFAULT_CONNECTIONS))
        )
        self.months: dict[tuple[int, date], _Month] = {}

    def month(self, organization_id: int, period: date) -> _Month:
        month = self.months.get((organization_id, period))
        if month is None:
            month = self.months[(organization_id, period)] = _Month()
        return month

    def kick(self, organization_id: int, period: date, month: _Month) -> None:
        if month.task is None:
            month.task = self.loop.create_task(self._flush(organization_id, period, month))

    async def _flush(self, organization_id: int, period: date, month: _Month) -> None:
        try:
            while month.has_work():
                asks, month.asks = month.asks, []
                waiters, month.waiters = month.waiters, []
                request_delta, token_delta = month.request_delta, month.token_delta
                month.request_delta = month.token_delta = 0
                try:
                    await self._apply(organization_id, period, asks, request_delta, token_delta)
                except Exception as error:
                    month.request_delta += request_delta  # settlements wait for the next flush
                    month.token_delta += token_delta
                    self._fail(organization_id, asks, waiters, error)
                    if not month.asks:
                        break  # nothing waits on the database: do not spin while it is down
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            month.task = None
            if not month.has_work() and self.months.get((organization_id, period)) is month:
                del self.months[(organization_id, period)]

    def _fail(self, organization_id: int, asks: list[_Ask], waiters, error: Exception) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(QuotaUnavailable(str(error)))
        for ask in asks:
            if ask.future.done():
                continue
            try:
                ask.future.set_result(
                    unavailable(
                        organization_id,
                        error,
                        now=ask.now,
                        request_limit=ask.request_limit,
                        token_limit=ask.token_limit,
                    )
                )
            except QuotaUnavailable as refusal:
                ask.future.set_exception(refusal)

    async def _apply(
        self,
        organization_id: int,
        period: date,
        asks: list[_Ask],
        request_delta: int,
        token_delta: int,
    ) -> None:
        # One statement per set of limits: all of a batch's, unless the plan changed meanwhile.
        groups: dict[tuple[int | None, int | None], list[_Ask]] = {}
        for ask in asks:
            groups.setdefault((ask.request_limit, ask.token_limit), []).append(ask)
        if not groups:  # settlements only
            groups[(None, None)] = []
        for (request_limit, token_limit), group in groups.items():
            params = {
                "org": organization_id,
                "period": period,
                "now": max((ask.now for ask in group), default=None) or utc(None),
                "dr": request_delta,
                "dt": token_delta,
                "counts": [ask.count for ask in group],
                "estimates": [ask.estimate for ask in group],
                "rl": request_limit,
                "tl": token_limit,
            }
            request_delta = token_delta = 0  # applied by the first statement
            row = await self.connections.fetchone(_STATEMENT, params)
            if row is None and group:  # the month's first request: create its row
                await self.connections.fetchone(_INSERT, params)
                row = await self.connections.fetchone(_STATEMENT, params)
            if row is None:
                if params["dr"] or params["dt"]:
                    logger.warning(
                        "quota settlement of organization %s for %s dropped: no counter row",
                        organization_id,
                        period,
                    )
                continue
            oks, requests, tokens = (row[0] or [], row[1] or [], row[2] or [])
            for ask, ok, used_requests, used_tokens in zip(
                group, oks, requests, tokens, strict=True
            ):
                exceeded = None
                if not ok:
                    exceeded = exceeded_limit(
                        used_requests + ask.count - 1,
                        used_tokens,
                        request_limit,
                        token_limit,
                        max(ask.estimate, 1),
                    )
                if not ask.future.done():
                    ask.future.set_result(
                        decision_for(
                            now=ask.now,
                            request_limit=request_limit,
                            token_limit=token_limit,
                            allowed=bool(ok),
                            exceeded=exceeded,
                            used=(used_requests, used_tokens),
                            counted=bool(ok),
                        )
                    )


_combiners: PerLoop[_Combiner] = PerLoop(_Combiner, close=lambda c: c.connections.finish_all())
_combiner = _combiners.get


# --- the calls --------------------------------------------------------------------------------


def admit_start(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int,
    now: datetime | None,
    count: int = 1,
) -> asyncio.Future:
    """Queue one admission of `count` requests (1; more for a lease) and `tokens` with the
    organization's others of this loop (module docstring); the future of its QuotaDecision (or
    QuotaUnavailable), whose figures are the counter's after it."""
    now = utc(now)
    combiner = _combiner()
    period = period_for(now)
    month = combiner.month(organization_id, period)
    ask = _Ask(tokens, count, request_limit, token_limit, now, quiet_future(combiner.loop))
    month.asks.append(ask)
    combiner.kick(organization_id, period, month)
    return ask.future


async def aadmit(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int,
    now: datetime | None,
) -> QuotaDecision:
    """One admission, batched with the organization's others of this loop (module docstring)."""
    return await asyncio.shield(
        admit_start(
            organization_id,
            request_limit=request_limit,
            token_limit=token_limit,
            tokens=tokens,
            now=now,
        )
    )


def settle_start(
    organization_id: int, *, period: date, token_delta: int, request_delta: int
) -> asyncio.Future:
    """Add a settlement to the organization-month's next flush, now; the future says when it
    is applied (or QuotaUnavailable: it stays pending for the next flush)."""
    combiner = _combiner()
    month = combiner.month(organization_id, period)
    month.token_delta += token_delta
    month.request_delta += request_delta
    waiter = quiet_future(combiner.loop)
    month.waiters.append(waiter)
    combiner.kick(organization_id, period, month)
    return waiter


async def aflush() -> None:
    """Wait until this loop's pending admissions and settlements went to the database (or
    failed): tests, and the server's shutdown."""
    combiner = _combiners.current()
    while combiner is not None:
        tasks = [month.task for month in combiner.months.values() if month.task is not None]
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=10)


async def aclose() -> None:
    """Flush, then close this loop's connections (the server's shutdown)."""
    await aflush()
    combiner = _combiners.pop()
    if combiner is not None:
        combiner.connections.finish_all()


def close_all() -> None:
    """Close every loop's connections, from outside any loop (tests, before the test database
    is dropped). Pending settlements of closed loops are lost with them."""
    _combiners.clear()
