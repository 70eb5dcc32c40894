"""The monthly quota on PostgreSQL from the event loop: the gateway's path (quota/__init__.py
sends asks and settlements here when the database is PostgreSQL).

counter.py's rule (one conditional statement on the organization's row, under its lock: never
over the quota) on the quota's own connections (pool.py). Per event loop and
organization-month, a combiner: what arrives while a flush runs goes into the next one, and a
flush is one statement (statement.py) that applies the pending settlements, then admits the
batch in arrival order exactly as one by one. Errors only ever lose quota, never give it away:
a statement lost with its connection counts its settlements as possibly applied (`unsure`).
Why batch (measured) and the error cases: docs/quota-leases.md.
"""

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings

from infra.loops import PerLoop, quiet_future
from metering.quota.decision import QuotaAsk, QuotaUnavailable, period_for, unavailable
from metering.quota.pool import Connections, StatementLost
from metering.quota.statement import (
    ANY_GENERATION,
    INSERT,
    STATEMENT,
    Queued,
    Settlements,
    decide,
    params_for,
    unsure,
)

logger = logging.getLogger(__name__)


def _merge(into: Settlements, settlements: Settlements) -> None:
    for generation, deltas in settlements.items():
        pending = into.setdefault(generation, [0, 0, 0, 0])
        for index, delta in enumerate(deltas):
            pending[index] += delta


def _resolve(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


@dataclass(slots=True)
class _Month:
    """What one organization-month of one loop waits to send."""

    asks: list[Queued] = field(default_factory=list)
    settlements: Settlements = field(default_factory=dict)
    waiters: list[asyncio.Future] = field(default_factory=list)
    task: asyncio.Task | None = None

    def has_work(self) -> bool:
        return bool(self.asks) or any(any(d) for d in self.settlements.values())


class _Combiner:
    """The quota's state on one event loop: its connections and its pending months."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections = Connections(settings.QUOTA_DB_CONNECTIONS)
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
                    self._fail(asks, waiters, error)
                    if not month.asks:
                        break  # nothing waits on the database: do not spin while it is down
                else:
                    _resolve(waiters)
        finally:
            month.task = None
            if not month.has_work() and self.months.get((organization_id, period)) is month:
                del self.months[(organization_id, period)]

    @staticmethod
    def _fail(asks: list[Queued], waiters, error: Exception) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(QuotaUnavailable(str(error)))
        for queued in asks:
            if queued.future.done():
                continue
            try:
                queued.future.set_result(unavailable(queued.ask, error))
            except QuotaUnavailable as refusal:
                queued.future.set_exception(refusal)

    async def _apply(
        self,
        organization_id: int,
        period: date,
        asks: list[Queued],
        settlements: Settlements,
        waiters: list[asyncio.Future],
    ) -> None:
        """Send the batch. The settlements ride with its first statement; once that returned
        they are done (`settlements` emptied, `waiters` told), whatever happens to the next."""
        # One statement per set of limits: all of a batch's, unless the plan changed meanwhile.
        groups: dict[tuple[int | None, int | None], list[Queued]] = {}
        for queued in asks:
            groups.setdefault(queued.ask.limits, []).append(queued)
        if not groups:  # settlements only
            groups[(None, None)] = []
        key = (organization_id, period)
        for limits, group in groups.items():
            pending = [(g, *d) for g, d in settlements.items() if any(d)]
            params = params_for(organization_id, period, limits, group, pending)
            row = await self._run(STATEMENT, params, key, settlements)
            if row is None and group:  # the month's first request: create its row
                await self._run(INSERT, params, key, settlements)
                row = await self._run(STATEMENT, params, key, settlements)
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
                decide(group, row)

    async def _run(
        self, statement: str, params: dict, key: tuple[int, date], settlements: Settlements
    ) -> tuple | None:
        """The statement on the loop's connections; once more on a new connection when a kept
        one broke under it. `settlements`: those it carries (params' s* arrays)."""
        try:
            return await self.connections.fetchone(statement, params)
        except StatementLost as lost:
            if statement is STATEMENT and params["sg"]:
                unsure(params, settlements, key)
            if not lost.kept:
                raise
        # A kept connection most likely died while idle, and the statement never reached the
        # server; had it been applied after all, its asks count twice (their quota is lost)
        # and its settlements are only those that may be applied twice (unsure).
        return await self.connections.fetchone(statement, params)


_combiners: PerLoop[_Combiner] = PerLoop(_Combiner, close=lambda c: c.connections.finish_all())
_combiner = _combiners.get


# --- the calls --------------------------------------------------------------------------------


def admit_start(ask: QuotaAsk, *, count: int = 1, lease: tuple[int, int] = (0, 0)):
    """Queue the ask of `count` requests (1; more for a lease) and `ask.tokens` with the
    organization's others of this loop (module docstring); the future of its QuotaDecision (or
    QuotaUnavailable), whose figures are the counter's after it. `lease`: the part of the
    requests and tokens reserved for a lease (lease.py), counted as leased in the row."""
    combiner = _combiner()
    period = period_for(ask.now)
    month = combiner.month(ask.organization_id, period)
    queued = Queued(ask, count, quiet_future(combiner.loop), lease)
    month.asks.append(queued)
    combiner.kick(ask.organization_id, period, month)
    return queued.future


def reservation(ask: QuotaAsk, count: int, tokens: int, lease: tuple[int, int]):
    """admit_start of a lease's reservation: `count` requests and `tokens` in all for `ask`."""
    return admit_start(dataclasses.replace(ask, tokens=tokens), count=count, lease=lease)


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
