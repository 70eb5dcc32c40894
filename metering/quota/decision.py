"""The monthly quota's values and arithmetic, shared by its three paths (counter.py, batched.py,
lease.py): `QuotaAsk` (what one request asks), `QuotaDecision` (the answer), `QuotaUnavailable`
(the 503 when the database cannot answer), the calendar month (UTC) and the refusal's figures.
Pure, apart from reading the quota settings.
"""

import logging
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.conf import settings

from infra.errors import ApplicationError

logger = logging.getLogger(__name__)

REQUESTS = "requests"
TOKENS = "tokens"

QUOTA_UNAVAILABLE = "quota_unavailable"
QUOTA_UNAVAILABLE_MESSAGE = "The monthly quota cannot be checked right now; retry shortly."
QUOTA_UNAVAILABLE_RETRY_SECONDS = 5

# How long a lease (lease.py) admits after its reservation came back before it is settled and
# a new one reserved (QUOTA_LEASE_MAX_AGE_SECONDS), and the margin given to the reservation's
# statement and its give-back's: the row's leased_until is the reservation's ask plus both.
LEASE_SETTLE_MARGIN_SECONDS = 1.0


def lease_max_age() -> float:
    return settings.QUOTA_LEASE_MAX_AGE_SECONDS


def lease_hold_seconds() -> float:
    """At most how long a lease's reservation stays in the row: its age plus the margin."""
    return lease_max_age() + LEASE_SETTLE_MARGIN_SECONDS


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


def utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)  # timezone.now() without reading USE_TZ (always on here)
    if now.tzinfo is None:  # naive datetimes are UTC in this project (TIME_ZONE = "UTC")
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def period_for(now: datetime) -> date:
    """The first day of `now`'s calendar month, in UTC."""
    now = utc(now)
    return date(now.year, now.month, 1)


def _next_period_start(period: date) -> datetime:
    return datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class QuotaAsk:
    """One request's ask of its organization's monthly quota: one request estimated at `tokens`,
    under these limits (None: no limit), at `now` (UTC; now when not given)."""

    organization_id: int
    request_limit: int | None
    token_limit: int | None
    tokens: int = 0
    now: datetime | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            raise ValueError("the token estimate cannot be negative")
        self.now = utc(self.now)

    @property
    def unlimited(self) -> bool:
        return self.request_limit is None and self.token_limit is None

    @property
    def limits(self) -> tuple[int | None, int | None]:
        return self.request_limit, self.token_limit


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
    ask: QuotaAsk,
    *,
    used: tuple[int, int],
    leased: tuple[int, int],
    leased_until: datetime | None,
    count: int = 1,
) -> int | None:
    """Whole seconds until the leases counted in the row are given back, when the room they
    reserved is all that refuses an ask of `count` requests (their unused part may come back);
    None when the quota refuses it anyway, or when those leases are overdue (their processes
    died: the room is lost for the month). At most lease_hold_seconds(): another server's clock
    may be ahead."""
    now = ask.now
    if leased_until is None or now >= leased_until or not (leased[0] or leased[1]):
        return None
    without_leases = (used[0] - leased[0] + count - 1, used[1] - leased[1])
    if exceeded_limit(*without_leases, *ask.limits, max(ask.tokens, 1)) is not None:
        return None
    wait = min((leased_until - now).total_seconds(), lease_hold_seconds())
    return max(1, math.ceil(wait))


def decision_for(
    ask: QuotaAsk,
    *,
    allowed: bool,
    exceeded: str | None,
    used: tuple[int, int],
    counted: bool,
    leased: bool = False,
    generation: int = 0,
    retry_after: int | None = None,
) -> QuotaDecision:
    """The QuotaDecision of this ask with these figures. A refusal's `retry_after` runs to the
    month's end unless given (lease_retry_after)."""
    period = period_for(ask.now)
    resets_at = _next_period_start(period)
    if allowed:
        retry_after = 0
    elif retry_after is None:
        retry_after = max(1, math.ceil((resets_at - ask.now).total_seconds()))
    return QuotaDecision(
        allowed=allowed,
        exceeded=exceeded,
        period=period,
        requests_used=used[0],
        tokens_used=used[1],
        request_limit=ask.request_limit,
        token_limit=ask.token_limit,
        resets_at=resets_at,
        retry_after=retry_after,
        counted=counted,
        leased=leased,
        generation=generation,
    )


def uncounted(ask: QuotaAsk) -> QuotaDecision:
    """Admitted with nothing counted: no quota, or QUOTA_FAIL_OPEN while the database fails."""
    return decision_for(ask, allowed=True, exceeded=None, used=(0, 0), counted=False)


def unavailable(ask: QuotaAsk, error: Exception) -> QuotaDecision:
    """The database could not admit: an unmetered admission with QUOTA_FAIL_OPEN, else raise
    QuotaUnavailable. Logged either way."""
    if settings.QUOTA_FAIL_OPEN:
        logger.error(
            "monthly quota of organization %s not checked (database error: %s); request "
            "admitted unmetered because QUOTA_FAIL_OPEN is on",
            ask.organization_id,
            error,
        )
        return uncounted(ask)
    logger.error(
        "monthly quota of organization %s not checked (database error: %s); request refused",
        ask.organization_id,
        error,
    )
    raise QuotaUnavailable(str(error)) from error
