"""The monthly quota's rule in sync code, on Django's connection: one conditional UPDATE of the
organization's row for the month per admission (`... WHERE requests + 1 <= limit AND tokens +
estimate <= limit RETURNING ...`), whose row lock serializes the organization's admissions:
never over the quota, whatever the number of processes. No row back: a new month (the row is
created: lazy rollover) or a limit reached. Autocommit: call outside a transaction.

The async path of databases other than PostgreSQL (SQLite, the embedded default) runs `admit`
and `settle` in a worker thread; `settle_rows` is usage_record's settlement. A database failure
refuses (QuotaUnavailable, 503) unless QUOTA_FAIL_OPEN. The rule in full: docs/quota-leases.md.
"""

import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime

from asgiref.sync import sync_to_async
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
)
from django.db.models import F, PositiveBigIntegerField, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from infra.db import when_unlocked
from metering.models import QuotaCounter
from metering.quota.decision import (
    REQUESTS,
    TOKENS,
    QuotaAsk,
    QuotaDecision,
    QuotaUnavailable,
    decision_for,
    exceeded_limit,
    lease_retry_after,
    period_for,
    unavailable,
    uncounted,
)

# Every error the driver can raise: InterfaceError (a closed connection) is not a DatabaseError.
_DB_ERRORS = (DatabaseError, InterfaceError)
# What a connection that died while idle raises (server restart, idle timeout, failover).
_CONNECTION_ERRORS = (OperationalError, InterfaceError)
# A limit read between a refused UPDATE and the read of the row may have changed (a reset, a
# settlement giving tokens back): the admission is tried again, this many times at most.
_ATTEMPTS = 3

# The statements, with values bound by the driver. Plain SQL valid on PostgreSQL and on SQLite
# >= 3.35 (RETURNING; ON CONFLICT since 3.24).
_UPDATE = (
    "UPDATE metering_quotacounter SET requests = requests + 1, tokens = tokens + %s, "
    "updated_at = %s WHERE organization_id = %s AND period = %s"
)
_REQUEST_CHECK = " AND requests + 1 <= %s"
_TOKEN_CHECK = " AND tokens + %s <= %s"
_RETURNING = " RETURNING requests, tokens, generation"
_SELECT = (
    "SELECT requests, tokens, generation, leased_requests, leased_tokens, leased_until "
    "FROM metering_quotacounter WHERE organization_id = %s AND period = %s"
)
_INSERT = (
    "INSERT INTO metering_quotacounter (organization_id, period, requests, tokens, updated_at) "
    "VALUES (%s, %s, 0, 0, %s) ON CONFLICT (organization_id, period) DO NOTHING"
)


def _aware(value) -> datetime | None:
    """A datetime read by a raw cursor: SQLite gives its text."""
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(slots=True)
class _Row:
    """What one admission found in the database."""

    admitted: bool
    exceeded: str | None
    used: tuple[int, int]
    generation: int = 0
    retry_after: int | None = None  # None: until the month ends


def _update(ask: QuotaAsk, db_period, db_now) -> tuple[str, list]:
    """The conditional UPDATE of this ask and its parameters."""
    statement = _UPDATE
    params: list = [ask.tokens, db_now, ask.organization_id, db_period]
    if ask.request_limit is not None:
        statement += _REQUEST_CHECK
        params.append(ask.request_limit)
    if ask.token_limit is not None:
        statement += _TOKEN_CHECK
        params += [max(ask.tokens, 1), ask.token_limit]
    return statement + _RETURNING, params


def _admit_row(ask: QuotaAsk) -> _Row:
    """The admission in the database. See the module docstring."""
    ops = connection.ops
    db_period = ops.adapt_datefield_value(period_for(ask.now))
    db_now = ops.adapt_datetimefield_value(ask.now)
    update, update_params = _update(ask, db_period, db_now)
    current = _Row(False, None, (0, 0))
    with connection.cursor() as cursor:
        for _ in range(_ATTEMPTS):
            cursor.execute(update, update_params)
            row = cursor.fetchone()
            if row is not None:
                return _Row(True, None, (row[0], row[1]), row[2])
            cursor.execute(_SELECT, [ask.organization_id, db_period])
            row = cursor.fetchone()
            if row is None:  # the first request of the month: create the row, then count
                cursor.execute(_INSERT, [ask.organization_id, db_period, db_now])
                continue
            current.used, current.generation = (row[0], row[1]), row[2]
            current.retry_after = lease_retry_after(
                ask, used=current.used, leased=(row[3], row[4]), leased_until=_aware(row[5])
            )
            current.exceeded = exceeded_limit(*current.used, *ask.limits, max(ask.tokens, 1))
            if current.exceeded is not None:
                return current
    # Figures kept moving under us (resets, settlements): refuse on the last ones read.
    current.exceeded = REQUESTS if ask.request_limit is not None else TOKENS
    return current


def _retrying(call, retry_stale: bool):
    """`call()` unlocked; with `retry_stale`, once more on a new connection when the kept one
    died while idle. Had the lost statement been applied after all, a request counts twice:
    one request of quota lost, never one given away."""
    try:
        return when_unlocked(call)
    except _CONNECTION_ERRORS:
        if not retry_stale:
            raise
        with suppress(*_DB_ERRORS):
            connection.close()
        return when_unlocked(call)


def admit(ask: QuotaAsk, *, retry_stale: bool = False) -> QuotaDecision:
    """Count the ask against its organization's monthly quota, or refuse it. No SQL when
    unlimited. Raises QuotaUnavailable when the database fails, unless QUOTA_FAIL_OPEN. Runs in
    a worker thread for aquota_admit_start (aadmit_in_thread)."""
    if ask.unlimited:
        return uncounted(ask)
    try:
        row = _retrying(lambda: _admit_row(ask), retry_stale)
    except _DB_ERRORS as error:
        return unavailable(ask, error)
    return decision_for(
        ask,
        allowed=row.admitted,
        exceeded=row.exceeded,
        used=row.used,
        counted=row.admitted,
        generation=row.generation,
        retry_after=row.retry_after,
    )


def settle(
    organization_id: int,
    *,
    period: date,
    token_delta: int = 0,
    request_delta: int = 0,
    generation: int | None = None,
    retry_stale: bool = False,
) -> None:
    """Move the counter of the month the request was admitted in by `token_delta` (actual
    tokens minus the estimate; may be negative) and `request_delta` (-1 gives back a request
    refused after its admission); never below 0. With the request's `generation`, nothing moves
    once the counter was reset since. Raises QuotaUnavailable when the database fails."""
    if not token_delta and not request_delta:
        return

    def update() -> int:
        return settle_rows(organization_id, period, token_delta, request_delta, generation)

    try:
        _retrying(update, retry_stale)
    except _DB_ERRORS as error:
        raise QuotaUnavailable(str(error)) from error


def settle_rows(
    organization_id: int,
    period: date,
    token_delta: int,
    request_delta: int = 0,
    generation: int | None = None,
) -> int:
    """settle's statement alone, in the caller's transaction (usage_record's): database errors
    are the caller's. Returns the number of rows moved (0: no row of that month, or of that
    generation)."""
    counter = PositiveBigIntegerField()
    rows = QuotaCounter.objects.filter(organization_id=organization_id, period=period)
    if generation is not None:
        rows = rows.filter(generation=generation)
    return rows.update(
        requests=Greatest(F("requests") + request_delta, Value(0), output_field=counter),
        tokens=Greatest(F("tokens") + token_delta, Value(0), output_field=counter),
        updated_at=timezone.now(),
    )


# --- async: one hop to a worker thread ---------------------------------------------------------
# Each executor thread keeps its own connection; why not close it, or close_old_connections()
# per call, measured: docs/quota-leases.md ("The worker-thread path").


def _prepare_connection() -> bool:
    """close_old_connections() for this thread's default connection, without the liveness
    query. True when an open connection is kept (it may still have died while idle)."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.connection is None:
        return False
    obsolete = db.close_at is not None and time.monotonic() >= db.close_at
    if db.errors_occurred or obsolete or not db.get_autocommit():
        with suppress(*_DB_ERRORS):
            db.close()
        return False
    return True


def _admit_in_thread(ask: QuotaAsk) -> QuotaDecision:
    return admit(ask, retry_stale=_prepare_connection())


def _settle_in_thread(organization_id: int, **deltas) -> None:
    settle(organization_id, **deltas, retry_stale=_prepare_connection())


async def aadmit_in_thread(ask: QuotaAsk) -> QuotaDecision:
    """admit in a worker thread (not thread-sensitive: a request must not queue behind other
    requests' ORM calls): the async path of databases other than PostgreSQL."""
    return await sync_to_async(_admit_in_thread, thread_sensitive=False)(ask)


async def asettle_in_thread(organization_id: int, **deltas) -> None:
    """settle in a worker thread (see aadmit_in_thread); `deltas`: settle's keywords."""
    if not deltas.get("token_delta") and not deltas.get("request_delta"):
        return
    await sync_to_async(_settle_in_thread, thread_sensitive=False)(organization_id, **deltas)
