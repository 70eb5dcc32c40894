"""The quota leases of one event loop (lease.py admits from them): each lease's room, the
figures last seen per organization-month, the reservations under way, and the give-back of a
lease's unused part (idle, old, spent, on a change of limits, at shutdown).
"""

import asyncio
import time
from dataclasses import dataclass
from datetime import date

from django.conf import settings

from infra.loops import PerLoop
from metering.quota import batched
from metering.quota.decision import QuotaDecision

LEASE_FRACTION = 64
LEASE_MAX = 4096


@dataclass(slots=True)
class Lease:
    request_limit: int | None
    token_limit: int | None
    generation: int  # the counter's, when the lease was reserved
    requests: int  # left to admit
    tokens: int  # left to admit (negative: owed after settlements above the estimates)
    reserved: tuple[int, int]  # what its reservation put in the row's leased columns
    # Monotonic: when its reservation came back plus QUOTA_LEASE_MAX_AGE_SECONDS; from then on
    # it admits nothing (read once here: no settings lookup per admission).
    expires: float
    last_use: float
    timer: asyncio.TimerHandle | None = None

    def usable(self, request_limit: int | None, token_limit: int | None, clock: float) -> bool:
        """Whether it may still admit: under the same limits (no plan change), not too old."""
        return (self.request_limit, self.token_limit) == (request_limit, token_limit) and (
            clock < self.expires
        )

    def fits(self, tokens: int) -> bool:
        return self.requests >= 1 and self.tokens >= max(tokens, 1)


class Leases:
    """The leases and the last figures seen, of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.leases: dict[tuple[int, date], Lease] = {}
        self.figures: dict[tuple[int, date], tuple[int, int]] = {}  # after the last ask
        # A lease being reserved: the requests that find no room meanwhile wait for it instead
        # of reserving one each (500 streams arriving at once would reserve 500 leases). The
        # future is done once the reservation's outcome is known (and its lease in `leases`):
        # its decision, or the exception it failed with (see _leased).
        self.reserving: dict[tuple[int, date], asyncio.Future] = {}
        self.waiting: dict[tuple[int, date], int] = {}  # requests waiting for `reserving`

    def size(self, key, request_limit, token_limit, tokens: int) -> tuple[int, int]:
        """(requests, tokens) to reserve for a lease now; (1, tokens) = no lease. At least
        QUOTA_LEASE_REQUESTS, or the requests waiting for a lease (a burst: 500 streams
        arriving at once are served by one reservation, not eight in a row), at most
        LEASE_MAX, and never more than 1/64 of what remains."""
        figures = self.figures.get(key)
        if figures is None:
            return 1, tokens
        size = settings.QUOTA_LEASE_REQUESTS
        if size > 1:
            size = min(max(size, self.waiting.get(key, 0) + 1), LEASE_MAX)
        if request_limit is not None:
            size = min(size, (request_limit - figures[0]) // LEASE_FRACTION)
        lease_tokens = size * max(tokens, 1)
        if token_limit is not None:
            lease_tokens = min(lease_tokens, (token_limit - figures[1]) // LEASE_FRACTION)
        if size < 2 or lease_tokens < 2 * max(tokens, 1):
            return 1, tokens
        return size, lease_tokens

    def far(self, key, request_limit, token_limit, tokens: int) -> bool:
        return self.size(key, request_limit, token_limit, tokens)[0] > 1

    def seen(self, key, decision: QuotaDecision) -> None:
        """A statement's decision: its figures, and its generation. A lease of an earlier
        generation is forgotten: the counter was reset since, and zeroed the lease with it
        (nothing to give back)."""
        self.figures[key] = (decision.requests_used, decision.tokens_used)
        lease = self.leases.get(key)
        if lease is not None and lease.generation < decision.generation:
            self.forget(key)

    def forget(self, key) -> Lease | None:
        lease = self.leases.pop(key, None)
        if lease is not None and lease.timer is not None:
            lease.timer.cancel()
        return lease

    def give_back(self, organization_id: int, period: date) -> None:
        """The lease's unused part back to the counter, and its reservation off the row's
        leased columns, if the counter has not been reset since (rides with the next
        statement)."""
        lease = self.forget((organization_id, period))
        if lease is None:
            return
        if lease.requests or lease.tokens or any(lease.reserved):
            batched.settle_start(
                organization_id,
                period=period,
                request_delta=-lease.requests,
                token_delta=-lease.tokens,
                generation=lease.generation,
                leased_delta=(-lease.reserved[0], -lease.reserved[1]),
            )

    def watch(self, organization_id: int, period: date, lease: Lease) -> None:
        """Give the lease back once idle for QUOTA_LEASE_IDLE_SECONDS or at its max age."""
        idle = settings.QUOTA_LEASE_IDLE_SECONDS

        def due_in() -> float:
            return min(lease.last_use + idle, lease.expires) - time.monotonic()

        def check() -> None:
            if self.leases.get((organization_id, period)) is not lease:
                return
            wait = due_in()
            if wait <= 0:
                self.give_back(organization_id, period)
            else:
                lease.timer = self.loop.call_later(wait, check)

        lease.timer = self.loop.call_later(max(due_in(), 0), check)


loops: PerLoop[Leases] = PerLoop(Leases)
