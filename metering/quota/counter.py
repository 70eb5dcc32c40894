"""The monthly quota of an organization: requests and tokens per calendar month (UTC), counted
in PostgreSQL, the one source of truth (DESIGN.md, "Quotas").

One row per organization and month (`metering.QuotaCounter`); admitting a request is ONE
conditional UPDATE of it (`... WHERE requests + 1 <= limit AND tokens + estimate <= limit
RETURNING ...`), whose row lock serializes an organization's admissions: the quota is never
exceeded, whatever the number of processes. Autocommit: call these outside a transaction. No
row back: a new month (the row is created, lazy rollover) or a limit reached. Tokens are
admitted on an estimate and settled afterwards; a settlement given its generation applies only
if no reset (`quota_reset`) came since. A database failure refuses (`QuotaUnavailable`, 503)
unless QUOTA_FAIL_OPEN. The rule in full, Retry-After and leases: docs/quota-leases.md.
"""

import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import F, PositiveBigIntegerField, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Organization
from infra.db import when_unlocked
from infra.errors import ApplicationError
from metering.models import QuotaCounter

logger = logging.getLogger(__name__)

REQUESTS = "requests"
TOKENS = "tokens"

# Every error the driver can raise: InterfaceError (a closed connection) is not a DatabaseError.
_DB_ERRORS = (DatabaseError, InterfaceError)
# What a connection that died while idle raises (server restart, idle timeout, failover).
_CONNECTION_ERRORS = (OperationalError, InterfaceError)
# A limit read between a refused UPDATE and the read of the row may have changed (a reset, a
# settlement giving tokens back): the admission is tried again, this many times at most.
_ATTEMPTS = 3

# How long a lease (lease.py) admits after its reservation came back before it is settled and
# a new one reserved (QUOTA_LEASE_MAX_AGE_SECONDS), and the margin given to the reservation's
# statement and its give-back's: the row's leased_until is the reservation's ask plus both.
LEASE_SETTLE_MARGIN_SECONDS = 1.0


def lease_max_age() -> float:
    return settings.QUOTA_LEASE_MAX_AGE_SECONDS


def lease_hold_seconds() -> float:
    """At most how long a lease's reservation stays in the row: its age plus the margin."""
    return lease_max_age() + LEASE_SETTLE_MARGIN_SECONDS


QUOTA_UNAVAILABLE = "quota_unavailable"
QUOTA_UNAVAILABLE_MESSAGE = "The monthly quota cannot be checked right now; retry shortly."
QUOTA_UNAVAILABLE_RETRY_SECONDS = 5


class QuotaUnavailable(ApplicationError):
    """The database could not check (or settle) the monthly quota: a 503 with Retry-After.
    `detail` is the database's error, for the logs (never sent to the client)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            QUOTA_UNAVAILABLE,
            QUOTA_UNAVAILABLE_MESSAGE,
            status=503,
            extra={"retry_after": QUOTA_UNAVAILABLE_RETRY_SECONDS},
            headers={"Retry-After": str(QUOTA_UNAVAILABLE_RETRY_SECONDS)},
        )
        self.detail = detail


@dataclass(slots=True)
class QuotaDecision:
    allowed: bool
    exceeded: str | None  # "requests" | "tokens" | None
    period: date  # first day of the month (UTC)
    requests_used: int  # after this request if admitted, else current
    tokens_used: int
    request_limit: int | None
    token_limit: int | None
    resets_at: datetime  # first instant of the next month, UTC
    retry_after: int  # whole seconds until resets_at when refused, else 0
    # The request is in the counter and should be settled. False when there is no quota (no
    # SQL ran, the figures are 0) and when QUOTA_FAIL_OPEN admitted it without the database.
    counted: bool = True
    # Admitted from this process's lease (lease.py): settle it with lease.settle, and its
    # figures are those of the lease's last reservation.
    leased: bool = False
    # The counter's generation (bumped by every reset) the request was counted in: pass it to
    # the settlement, which then does nothing once the counter was reset.
    generation: int = 0


def utc(now: datetime | None) -> datetime:
    if now is None:
        return timezone.now().astimezone(UTC)
    if now.tzinfo is None:  # naive datetimes are UTC in this project (TIME_ZONE = "UTC")
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def period_for(now: datetime) -> date:
    """The first day of `now`'s calendar month, in UTC."""
    now = utc(now)
    return date(now.year, now.month, 1)


def _next_period_start(period: date) -> datetime:
    return datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)


# --- SQL -----------------------------------------------------------------------------------------


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


def _admit_statement(request_limit: int | None, token_limit: int | None) -> str:
    statement = _UPDATE
    if request_limit is not None:
        statement += _REQUEST_CHECK
    if token_limit is not None:
        statement += _TOKEN_CHECK
    return statement + _RETURNING


def exceeded_limit(
    requests: int,
    tokens: int,
    request_limit: int | None,
    token_limit: int | None,
    checked_tokens: int,
) -> str | None:
    """Which limit refuses one more request on these figures (None: neither does)."""
    if request_limit is not None and requests + 1 > request_limit:
        return REQUESTS
    if token_limit is not None and tokens + checked_tokens > token_limit:
        return TOKENS
    return None


def lease_retry_after(
    *,
    now: datetime,
    used: tuple[int, int],
    leased: tuple[int, int],
    leased_until: datetime | None,
    request_limit: int | None,
    token_limit: int | None,
    count: int,
    checked_tokens: int,
) -> int | None:
    """Whole seconds until the leases counted in the row are given back, when the room they
    reserved is all that refuses an ask of `count` requests (their unused part may come back);
    None when the quota refuses it anyway, or when those leases are overdue (their processes
    died: the room is lost for the month). At most lease_hold_seconds(): another server's clock
    may be ahead."""
    if leased_until is None or now >= leased_until or not (leased[0] or leased[1]):
        return None
    without_leases = (used[0] - leased[0] + count - 1, used[1] - leased[1])
    if exceeded_limit(*without_leases, request_limit, token_limit, checked_tokens) is not None:
        return None
    wait = min((leased_until - now).total_seconds(), lease_hold_seconds())
    return max(1, math.ceil(wait))


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


def _admit_row(
    organization_id: int,
    period: date,
    now: datetime,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int,
) -> _Row:
    """The admission in the database. See the module docstring."""
    ops = connection.ops
    db_period = ops.adapt_datefield_value(period)
    db_now = ops.adapt_datetimefield_value(now)
    checked_tokens = max(tokens, 1)
    update = _admit_statement(request_limit, token_limit)
    update_params: list = [tokens, db_now, organization_id, db_period]
    if request_limit is not None:
        update_params.append(request_limit)
    if token_limit is not None:
        update_params += [checked_tokens, token_limit]
    current = _Row(False, None, (0, 0))
    with connection.cursor() as cursor:
        for _ in range(_ATTEMPTS):
            cursor.execute(update, update_params)
            row = cursor.fetchone()
            if row is not None:
                return _Row(True, None, (row[0], row[1]), row[2])
            cursor.execute(_SELECT, [organization_id, db_period])
            row = cursor.fetchone()
            if row is None:  # the first request of the month: create the row, then count
                cursor.execute(_INSERT, [organization_id, db_period, db_now])
                continue
            current.used, current.generation = (row[0], row[1]), row[2]
            current.retry_after = lease_retry_after(
                now=now,
                used=current.used,
                leased=(row[3], row[4]),
                leased_until=_aware(row[5]),
                request_limit=request_limit,
                token_limit=token_limit,
                count=1,
                checked_tokens=checked_tokens,
            )
            current.exceeded = exceeded_limit(
                *current.used, request_limit, token_limit, checked_tokens
            )
            if current.exceeded is not None:
                return current
    # Figures kept moving under us (resets, settlements): refuse on the last ones read.
    current.exceeded = REQUESTS if request_limit is not None else TOKENS
    return current


# --- admission -----------------------------------------------------------------------------------


def quota_admit(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int = 0,
    now: datetime | None = None,
) -> QuotaDecision:
    """Count one request of the organization, estimated at `tokens`, against its monthly quota,
    or refuse it. No SQL when both limits are None (unlimited). Raises QuotaUnavailable when
    the database fails, unless QUOTA_FAIL_OPEN. See the module docstring."""
    return _admit(organization_id, request_limit, token_limit, tokens, now, retry_stale=False)


def decision_for(
    *,
    now: datetime,
    request_limit: int | None,
    token_limit: int | None,
    allowed: bool,
    exceeded: str | None,
    used: tuple[int, int],
    counted: bool,
    leased: bool = False,
    generation: int = 0,
    retry_after: int | None = None,
) -> QuotaDecision:
    """The QuotaDecision of one admission at `now` (UTC) with these figures. A refusal's
    `retry_after` runs to the month's end unless given (lease_retry_after)."""
    period = period_for(now)
    resets_at = _next_period_start(period)
    if allowed:
        retry_after = 0
    elif retry_after is None:
        retry_after = max(1, math.ceil((resets_at - now).total_seconds()))
    return QuotaDecision(
        allowed=allowed,
        exceeded=exceeded,
        period=period,
        requests_used=used[0],
        tokens_used=used[1],
        request_limit=request_limit,
        token_limit=token_limit,
        resets_at=resets_at,
        retry_after=retry_after,
        counted=counted,
        leased=leased,
        generation=generation,
    )


def uncounted(
    now: datetime | None = None,
    request_limit: int | None = None,
    token_limit: int | None = None,
) -> QuotaDecision:
    """Admitted with nothing counted: no quota, or QUOTA_FAIL_OPEN while the database fails."""
    return decision_for(
        now=utc(now),
        request_limit=request_limit,
        token_limit=token_limit,
        allowed=True,
        exceeded=None,
        used=(0, 0),
        counted=False,
    )


def unavailable(
    organization_id: int,
    error: Exception,
    *,
    now: datetime,
    request_limit: int | None,
    token_limit: int | None,
) -> QuotaDecision:
    """The database could not admit: an unmetered admission with QUOTA_FAIL_OPEN, else raise
    QuotaUnavailable. Logged either way."""
    if settings.QUOTA_FAIL_OPEN:
        logger.error(
            "monthly quota of organization %s not checked (database error: %s); request "
            "admitted unmetered because QUOTA_FAIL_OPEN is on",
            organization_id,
            error,
        )
        return uncounted(now, request_limit, token_limit)
    logger.error(
        "monthly quota of organization %s not checked (database error: %s); request refused",
        organization_id,
        error,
    )
    raise QuotaUnavailable(str(error)) from error


def _admit(
    organization_id: int,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int,
    now: datetime | None,
    *,
    retry_stale: bool,
) -> QuotaDecision:
    if tokens < 0:
        raise ValueError("the token estimate cannot be negative")
    if request_limit is None and token_limit is None:
        return uncounted(now)
    now = utc(now)
    limits = {"now": now, "request_limit": request_limit, "token_limit": token_limit}
    args = (organization_id, period_for(now), now, request_limit, token_limit, tokens)
    try:
        try:
            row = when_unlocked(lambda: _admit_row(*args))
        except _CONNECTION_ERRORS:
            if not retry_stale:
                raise
            # A kept connection that died while idle: once more on a new one. Had the lost
            # statement been applied after all, the request counts twice: one request of quota
            # lost, never one given away.
            with suppress(*_DB_ERRORS):
                connection.close()
            row = when_unlocked(lambda: _admit_row(*args))
    except _DB_ERRORS as error:
        return unavailable(organization_id, error, **limits)
    return decision_for(
        **limits,
        allowed=row.admitted,
        exceeded=row.exceeded,
        used=row.used,
        counted=row.admitted,
        generation=row.generation,
        retry_after=row.retry_after,
    )


def quota_settle(
    organization_id: int,
    *,
    period: date,
    token_delta: int = 0,
    request_delta: int = 0,
    generation: int | None = None,
) -> None:
    """After the call: move the month's counter of the period the request was admitted in by
    `token_delta` (actual tokens minus the admitted estimate; may be negative) and
    `request_delta` (-1 gives back a request refused after its admission). Never below 0.
    With the `generation` the request was counted in (QuotaDecision.generation), nothing
    happens once the counter was reset since; without it, whatever the counter holds moves.
    Raises QuotaUnavailable when the database fails."""
    _settle(organization_id, period, token_delta, request_delta, generation, retry_stale=False)


def _settle(
    organization_id: int,
    period: date,
    token_delta: int,
    request_delta: int,
    generation: int | None = None,
    *,
    retry_stale: bool,
) -> None:
    if not token_delta and not request_delta:
        return

    def update() -> int:
        return settle_rows(organization_id, period, token_delta, request_delta, generation)

    try:
        try:
            when_unlocked(update)
        except _CONNECTION_ERRORS:
            if not retry_stale:
                raise
            with suppress(*_DB_ERRORS):  # see _admit
                connection.close()
            when_unlocked(update)
    except _DB_ERRORS as error:
        raise QuotaUnavailable(str(error)) from error


def settle_rows(
    organization_id: int,
    period: date,
    token_delta: int,
    request_delta: int = 0,
    generation: int | None = None,
) -> int:
    """quota_settle's statement alone, in the caller's transaction (usage_record's): database
    errors are the caller's. Returns the number of rows moved (0: no row of that month, or of
    that generation)."""
    counter = PositiveBigIntegerField()
    rows = QuotaCounter.objects.filter(organization_id=organization_id, period=period)
    if generation is not None:
        rows = rows.filter(generation=generation)
    return rows.update(
        requests=Greatest(F("requests") + request_delta, Value(0), output_field=counter),
        tokens=Greatest(F("tokens") + token_delta, Value(0), output_field=counter),
        updated_at=timezone.now(),
    )


# --- async: one hop to a worker thread -----------------------------------------------------------
#
# The executor's threads are long-lived and each keeps its own database connection, at most one
# per thread. Closing it after every call (as keys/verification.py does for its rare cold-key
# SQL) would open a PostgreSQL connection, a new server process, for every quota-checked
# request: milliseconds, the gateway's whole budget. django.db.close_old_connections() before
# each call, as Django does per request, keeps the connection but (CONN_HEALTH_CHECKS) adds a
# "SELECT 1" round trip to every admission: measured on this machine (PostgreSQL 15), about
# 0.65 ms per aquota_admit becomes 0.8 ms. So each call does the same housekeeping without the
# round trip: a connection that saw an error or outlived CONN_MAX_AGE is closed first, and a
# kept connection found dead by the admission itself (server restart, idle timeout) is replaced
# once, at once.


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


def _admit_in_thread(organization_id: int, **kwargs) -> QuotaDecision:
    return _admit(organization_id, **kwargs, retry_stale=_prepare_connection())


def _settle_in_thread(organization_id: int, **kwargs) -> None:
    _settle(organization_id, **kwargs, retry_stale=_prepare_connection())


async def aquota_admit_in_thread(
    organization_id: int,
    *,
    request_limit: int | None,
    token_limit: int | None,
    tokens: int = 0,
    now: datetime | None = None,
) -> QuotaDecision:
    """quota_admit for async code, in a worker thread (not thread-sensitive: a request must not
    queue behind other requests' ORM calls): the path of databases other than PostgreSQL."""
    return await sync_to_async(_admit_in_thread, thread_sensitive=False)(
        organization_id,
        request_limit=request_limit,
        token_limit=token_limit,
        tokens=tokens,
        now=now,
    )


async def aquota_settle_in_thread(
    organization_id: int,
    *,
    period: date,
    token_delta: int = 0,
    request_delta: int = 0,
    generation: int | None = None,
) -> None:
    """quota_settle for async code, in a worker thread (see aquota_admit_in_thread)."""
    if not token_delta and not request_delta:
        return
    await sync_to_async(_settle_in_thread, thread_sensitive=False)(
        organization_id,
        period=period,
        token_delta=token_delta,
        request_delta=request_delta,
        generation=generation,
    )


# --- reads and operator actions ------------------------------------------------------------------


def quota_usage(organization_id: int, now: datetime | None = None) -> tuple[date, int, int]:
    """(period, requests, tokens) of the organization's current month; 0, 0 before its first
    request of the month."""
    period = period_for(utc(now))
    row = (
        QuotaCounter.objects.filter(organization_id=organization_id, period=period)
        .values_list("requests", "tokens")
        .first()
    )
    return (period, *row) if row else (period, 0, 0)


@transaction.atomic
def quota_reset(organization: Organization, *, actor: Actor, reason: str = "") -> None:
    """Zero the organization's counter of the current month (earlier months stay as they are)
    and record a "quota.reset" audit event with the figures it had.

    The reset starts a new generation of the counter: settlements and lease give-backs of
    admissions counted before it no longer move it, and processes stop admitting from leases
    reserved before it within QUOTA_LEASE_MAX_AGE_SECONDS of their reservation's return
    (lease.py)."""
    now = timezone.now()
    period = period_for(now)
    # The row lock makes the figures in the audit event exactly the ones zeroed.
    counter = (
        QuotaCounter.objects.select_for_update()
        .filter(organization=organization, period=period)
        .first()
    )
    requests, tokens = (counter.requests, counter.tokens) if counter else (0, 0)
    generation = counter.generation + 1 if counter else 0
    if counter is not None:
        QuotaCounter.objects.filter(pk=counter.pk).update(
            requests=0,
            tokens=0,
            leased_requests=0,
            leased_tokens=0,
            leased_until=None,
            generation=F("generation") + 1,
            updated_at=now,
        )
    audit_record(
        action=AuditAction.QUOTA_RESET,
        actor=actor,
        organization=organization,
        target_type="quota",
        target_id=f"{period:%Y-%m}",
        metadata={
            "period": period.isoformat(),
            "requests_before": requests,
            "tokens_before": tokens,
            "generation": generation,
            "reason": reason,
        },
    )
