"""The monthly quota on PostgreSQL from the event loop: the gateway's path (metering/quota/
__init__.py sends aquota_admit and aquota_settle here when the database is PostgreSQL).

counter.py's rule (one conditional statement on the organization's row, under its lock: never
over the quota), on psycopg AsyncConnections of its own (a few per loop, autocommit, prepared,
statement_timeout) instead of Django's connection and a thread. Per event loop and
organization-month, a combiner: what arrives while a flush runs goes into the next one, and a
flush is one statement (`_STATEMENT`) that applies the pending settlements, then admits the
batch in arrival order exactly as one by one. Errors only ever lose quota, never give it away:
a statement lost with its connection counts its settlements as possibly applied (`_unsure`).
Why batch (measured), the connection choice and the error cases: docs/quota-leases.md.
"""

import asyncio
import logging
import select
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from infra.loops import PerLoop, quiet_future
from metering.quota.counter import (
    QuotaDecision,
    QuotaUnavailable,
    decision_for,
    exceeded_limit,
    lease_hold_seconds,
    lease_retry_after,
    period_for,
    unavailable,
    utc,
)

logger = logging.getLogger(__name__)

# %(sg)s, %(sdr)s, %(sdt)s, %(slr)s, %(slt)s: pending settlements, one per generation (-1: any),
# of requests, tokens and the leased columns; those of the row's generation (and any) are
# applied first, never below 0. Leased figures past leased_until are of leases whose process
# died: they count as 0 from then on.
# %(counts)s / %(estimates)s: the batch's asks in arrival order, each a number of requests (1,
# or a lease's reservation: lease.py) and their tokens; a step admits an ask when it fits:
# requests + count <= %(rl)s and tokens + max(estimate, 1) <= %(tl)s (NULL = no limit; an
# estimate of 0 is checked as 1, as in counter.py). %(lcounts)s / %(lestimates)s: the part of
# each ask reserved for a lease (0 for a request alone), added to the leased columns when
# admitted, and then leased_until moved to %(lease_until)s if later.
_FITS = (
    "(%(rl)s::bigint IS NULL OR walk.r + est.n <= %(rl)s::bigint) AND "
    "(%(tl)s::bigint IS NULL OR walk.t + greatest(est.v, 1) <= %(tl)s::bigint)"
)
# The row is read, locked, in `cur` alone: what comes after is computed from the row as it is
# once locked (after a concurrent reset, its new generation).
_STATEMENT = f"""
WITH RECURSIVE
cur AS (
    SELECT id, generation AS g, requests, tokens, leased_requests, leased_tokens, leased_until
    FROM metering_quotacounter
    WHERE organization_id = %(org)s AND period = %(period)s
    FOR UPDATE
),
sett AS (
    SELECT coalesce(sum(u.dr), 0)::bigint AS dr, coalesce(sum(u.dt), 0)::bigint AS dt,
           coalesce(sum(u.dlr), 0)::bigint AS dlr, coalesce(sum(u.dlt), 0)::bigint AS dlt
    FROM cur, unnest(%(sg)s::bigint[], %(sdr)s::bigint[], %(sdt)s::bigint[],
                     %(slr)s::bigint[], %(slt)s::bigint[]) AS u(g, dr, dt, dlr, dlt)
    WHERE u.g < 0 OR u.g = cur.g
),
base AS (
    SELECT greatest(cur.requests + sett.dr, 0) AS r, greatest(cur.tokens + sett.dt, 0) AS t,
           CASE WHEN cur.leased_until > %(now)s::timestamptz
                THEN greatest(cur.leased_requests + sett.dlr, 0) ELSE 0 END AS lr,
           CASE WHEN cur.leased_until > %(now)s::timestamptz
                THEN greatest(cur.leased_tokens + sett.dlt, 0) ELSE 0 END AS lt
    FROM cur, sett
),
est AS (
    SELECT ord::int AS ord, n, v, ln, lv
    FROM unnest(%(counts)s::bigint[], %(estimates)s::bigint[], %(lcounts)s::bigint[],
                %(lestimates)s::bigint[]) WITH ORDINALITY AS u(n, v, ln, lv, ord)
),
walk AS (
    SELECT 0 AS ord, r, t, lr, lt, true AS ok FROM base
    UNION ALL
    SELECT est.ord,
           walk.r + CASE WHEN {_FITS} THEN est.n ELSE 0 END,
           walk.t + CASE WHEN {_FITS} THEN est.v ELSE 0 END,
           walk.lr + CASE WHEN {_FITS} THEN est.ln ELSE 0 END,
           walk.lt + CASE WHEN {_FITS} THEN est.lv ELSE 0 END,
           {_FITS}
    FROM walk JOIN est ON est.ord = walk.ord + 1
),
last AS (SELECT r, t, lr, lt FROM walk ORDER BY ord DESC LIMIT 1),
steps AS (
    SELECT array_agg(ok ORDER BY ord) AS ok, array_agg(r ORDER BY ord) AS r,
           array_agg(t ORDER BY ord) AS t, array_agg(lr ORDER BY ord) AS lr,
           array_agg(lt ORDER BY ord) AS lt
    FROM walk WHERE ord > 0
)
UPDATE metering_quotacounter AS q
SET requests = last.r, tokens = last.t, leased_requests = last.lr, leased_tokens = last.lt,
    leased_until = CASE WHEN last.lr + last.lt > base.lr + base.lt
                        THEN greatest(q.leased_until, %(lease_until)s::timestamptz)
                        ELSE q.leased_until END,
    updated_at = %(now)s
FROM cur, base, last, steps
WHERE q.id = cur.id
RETURNING steps.ok, steps.r, steps.t, steps.lr, steps.lt, q.generation, q.leased_until
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
    params["prepare_threshold"] = 0 if settings.QUOTA_DB_PREPARED else None
    timeout = settings.QUOTA_DB_TIMEOUT_SECONDS
    params.setdefault("connect_timeout", max(1, round(timeout)))
    options = f"{params.get('options', '')} -c statement_timeout={int(timeout * 1000)}"
    params["options"] = options.strip()
    return params


class StatementLost(Exception):
    """The connection broke while a statement ran: applied or not, nobody knows."""

    def __init__(self, message: str, *, kept: bool) -> None:
        super().__init__(message)
        self.kept = kept  # the connection had been kept idle (it most likely died meanwhile)


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

    def _kept(self) -> psycopg.AsyncConnection | None:
        """An idle connection still open, as far as can be told without a round trip."""
        while self.idle:
            conn = self.idle.pop()
            if not _closed_while_idle(conn):
                return conn
            self.discard(conn)  # the server ended it meanwhile: nothing was sent on it
        return None

    async def fetchone(self, statement: str, params: dict) -> tuple | None:
        """The statement's row, on a kept connection or a new one. Raises StatementLost when
        the connection broke while the statement ran: it may have been applied or not, and the
        caller decides whether running it again is safe (the module docstring, "Errors")."""
        async with self.slots:
            conn = self._kept()
            kept = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                row = await _fetchone(conn, statement, params)
            except BaseException as error:
                broken = conn.broken
                self.discard(conn)  # its state is unknown (error, cancellation mid-statement)
                if broken and isinstance(error, psycopg.OperationalError):
                    raise StatementLost(str(error), kept=kept) from error
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


def _closed_while_idle(conn: psycopg.AsyncConnection) -> bool:
    """Whether the server closed this idle connection: an idle autocommit session is sent
    nothing, so anything to read (its goodbye, the end of the stream) says so. Checked with a
    poll of its socket, no round trip. (Without poll(), outside POSIX: assumed open.)"""
    if conn.closed:
        return True
    if not hasattr(select, "poll"):
        return False
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


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
    lease: tuple[int, int] = (0, 0)  # the part of (count, estimate) reserved for a lease


ANY_GENERATION = -1
# Pending settlements of one organization-month by generation (ANY_GENERATION: whatever the
# row's): [requests, tokens, leased_requests, leased_tokens] to add.
_Settlements = dict[int, list[int]]


def _merge(into: _Settlements, settlements: _Settlements) -> None:
    for generation, deltas in settlements.items():
        pending = into.setdefault(generation, [0, 0, 0, 0])
        for index, delta in enumerate(deltas):
            pending[index] += delta


def _unsure(params: dict, settlements: _Settlements, key: tuple[int, date]) -> None:
    """A statement carrying these settlements was lost: applied or not, nobody knows. Sending
    them again could apply them twice, dropping them could lose them. Here is where the quota
    decides which, part by part (the settlements of a generation are summed per column): an
    addition (tokens used above the estimate) stays, to be sent again (applied twice, quota is
    lost); a give-back (a settlement below the estimate, a request given back, a lease's unused
    part and reservation) is dropped (never applied, quota is lost). Quota lost, never given
    away. Applied to `settlements` (what goes back to the month if the batch fails) and to the
    statement's parameters (its re-run)."""
    dropped = [0, 0]
    for deltas in settlements.values():
        for index, delta in enumerate(deltas):
            if delta < 0:
                deltas[index] = 0
                if index < 2:
                    dropped[index] -= delta
    for name in ("sdr", "sdt", "slr", "slt"):
        params[name] = [max(delta, 0) for delta in params[name]]
    if any(dropped):
        logger.warning(
            "quota of organization %s for %s: a statement was lost with settlements that give "
            "back %s requests and %s tokens; dropped, not applied twice (quota lost, never "
            "given away)",
            *key,
            *dropped,
        )


def _resolve(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


@dataclass(slots=True)
class _Month:
    """What one organization-month of one loop waits to send."""

    asks: list[_Ask] = field(default_factory=list)
    settlements: _Settlements = field(default_factory=dict)
    waiters: list[asyncio.Future] = field(default_factory=list)
    task: asyncio.Task | None = None

    def has_work(self) -> bool:
        return bool(self.asks) or any(any(d) for d in self.settlements.values())


class _Combiner:
    """The quota's state on one event loop: its connections and its pending months."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections = _Connections(settings.QUOTA_DB_CONNECTIONS)
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
                settlements, month.settlements = month.settlements, {}
                try:
                    await self._apply(organization_id, period, asks, settlements, waiters)
                except Exception as error:
                    # What was not applied waits for the next flush: _apply emptied
                    # `settlements` once a statement carried them.
                    _merge(month.settlements, settlements)
                    self._fail(organization_id, asks, waiters, error)
                    if not month.asks:
                        break  # nothing waits on the database: do not spin while it is down
                else:
                    _resolve(waiters)
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
        settlements: _Settlements,
        waiters: list[asyncio.Future],
    ) -> None:
        """Send the batch. The settlements ride with its first statement; once that returned
        they are done (`settlements` emptied, `waiters` told), whatever happens to the next."""
        # One statement per set of limits: all of a batch's, unless the plan changed meanwhile.
        groups: dict[tuple[int | None, int | None], list[_Ask]] = {}
        for ask in asks:
            groups.setdefault((ask.request_limit, ask.token_limit), []).append(ask)
        if not groups:  # settlements only
            groups[(None, None)] = []
        for (request_limit, token_limit), group in groups.items():
            pending = [(g, *d) for g, d in settlements.items() if any(d)]
            leasing = [ask.now for ask in group if ask.lease != (0, 0)]
            params = {
                "org": organization_id,
                "period": period,
                "now": max((ask.now for ask in group), default=None) or utc(None),
                "sg": [s[0] for s in pending],
                "sdr": [s[1] for s in pending],
                "sdt": [s[2] for s in pending],
                "slr": [s[3] for s in pending],
                "slt": [s[4] for s in pending],
                "counts": [ask.count for ask in group],
                "estimates": [ask.estimate for ask in group],
                "lcounts": [ask.lease[0] for ask in group],
                "lestimates": [ask.lease[1] for ask in group],
                "lease_until": (
                    max(leasing) + timedelta(seconds=lease_hold_seconds()) if leasing else None
                ),
                "rl": request_limit,
                "tl": token_limit,
            }
            key = (organization_id, period)
            row = await self._run(_STATEMENT, params, key, settlements)
            if row is None and group:  # the month's first request: create its row
                await self._run(_INSERT, params, key, settlements)
                row = await self._run(_STATEMENT, params, key, settlements)
            if pending:
                settlements.clear()  # applied: never sent again, even if a later group fails
                _resolve(waiters)
                if row is None:
                    logger.warning(
                        "quota settlement of organization %s for %s dropped: no counter row",
                        organization_id,
                        period,
                    )
            if row is not None:
                self._decide(group, row, request_limit, token_limit)

    async def _run(
        self, statement: str, params: dict, key: tuple[int, date], settlements: _Settlements
    ) -> tuple | None:
        """The statement on the loop's connections; once more on a new connection when a kept
        one broke under it. `settlements`: those it carries (params' s* arrays)."""
        try:
            return await self.connections.fetchone(statement, params)
        except StatementLost as lost:
            if statement is _STATEMENT and params["sg"]:
                _unsure(params, settlements, key)
            if not lost.kept:
                raise
        # A kept connection most likely died while idle, and the statement never reached the
        # server; had it been applied after all, its asks count twice (their quota is lost)
        # and its settlements are only those that may be applied twice (_unsure).
        return await self.connections.fetchone(statement, params)

    @staticmethod
    def _decide(group: list[_Ask], row: tuple, request_limit, token_limit) -> None:
        """Each ask's QuotaDecision from the statement's steps."""
        oks, requests, tokens = (row[0] or [], row[1] or [], row[2] or [])
        leased_requests, leased_tokens = (row[3] or [], row[4] or [])
        generation, leased_until = row[5], row[6]
        steps = zip(group, oks, requests, tokens, leased_requests, leased_tokens, strict=True)
        for ask, ok, used_requests, used_tokens, lr, lt in steps:
            exceeded = retry_after = None
            if not ok:
                limits = (request_limit, token_limit)
                checked_tokens = max(ask.estimate, 1)
                used = (used_requests, used_tokens)
                exceeded = exceeded_limit(
                    used_requests + ask.count - 1, used_tokens, *limits, checked_tokens
                )
                retry_after = lease_retry_after(
                    now=ask.now,
                    used=used,
                    leased=(lr, lt),
                    leased_until=leased_until,
                    request_limit=request_limit,
                    token_limit=token_limit,
                    count=ask.count,
                    checked_tokens=checked_tokens,
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
                        generation=generation,
                        retry_after=retry_after,
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
    lease: tuple[int, int] = (0, 0),
) -> asyncio.Future:
    """Queue one admission of `count` requests (1; more for a lease) and `tokens` with the
    organization's others of this loop (module docstring); the future of its QuotaDecision (or
    QuotaUnavailable), whose figures are the counter's after it. `lease`: the part of the
    requests and tokens reserved for a lease (lease.py), counted as leased in the row."""
    now = utc(now)
    combiner = _combiner()
    period = period_for(now)
    month = combiner.month(organization_id, period)
    ask = _Ask(tokens, count, request_limit, token_limit, now, quiet_future(combiner.loop), lease)
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
    organization_id: int,
    *,
    period: date,
    token_delta: int,
    request_delta: int,
    generation: int | None = None,
    leased_delta: tuple[int, int] = (0, 0),
) -> asyncio.Future:
    """Add a settlement to the organization-month's next flush, now; the future says when it
    is applied (or QuotaUnavailable: it stays pending for the next flush). With `generation`
    it applies only if the row still has it (no reset since). `leased_delta`: what a lease's
    give-back takes off the row's leased columns."""
    combiner = _combiner()
    month = combiner.month(organization_id, period)
    key = ANY_GENERATION if generation is None else generation
    _merge(month.settlements, {key: [request_delta, token_delta, *leased_delta]})
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
