"""The statement of the quota's batched path (batched.py): one statement per organization-month
and set of limits that applies the pending settlements, then admits the batch's asks in arrival
order exactly as one by one would, under the row's lock; and each ask's decision from its row.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import date, timedelta

from metering.quota.decision import (
    QuotaAsk,
    decision_for,
    exceeded_limit,
    lease_hold_seconds,
    lease_retry_after,
    utc,
)

logger = logging.getLogger(__name__)

ANY_GENERATION = -1
# Pending settlements of one organization-month by generation (ANY_GENERATION: whatever the
# row's): [requests, tokens, leased_requests, leased_tokens] to add.
Settlements = dict[int, list[int]]


@dataclass(slots=True)
class Queued:
    """One ask in a batch: `count` requests (1, or a lease's reservation) and `ask.tokens`."""

    ask: QuotaAsk
    count: int
    future: asyncio.Future
    lease: tuple[int, int] = (0, 0)  # the part of (count, tokens) reserved for a lease


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
FITS = (
    "(%(rl)s::bigint IS NULL OR walk.r + est.n <= %(rl)s::bigint) AND "
    "(%(tl)s::bigint IS NULL OR walk.t + greatest(est.v, 1) <= %(tl)s::bigint)"
)
# The row is read, locked, in `cur` alone: what comes after is computed from the row as it is
# once locked (after a concurrent reset, its new generation).
STATEMENT = f"""
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
           walk.r + CASE WHEN {FITS} THEN est.n ELSE 0 END,
           walk.t + CASE WHEN {FITS} THEN est.v ELSE 0 END,
           walk.lr + CASE WHEN {FITS} THEN est.ln ELSE 0 END,
           walk.lt + CASE WHEN {FITS} THEN est.lv ELSE 0 END,
           {FITS}
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
INSERT = (
    "INSERT INTO metering_quotacounter (organization_id, period, requests, tokens, updated_at) "
    "VALUES (%(org)s, %(period)s, 0, 0, %(now)s) ON CONFLICT (organization_id, period) DO NOTHING"
)


def unsure(params: dict, settlements: Settlements, key: tuple[int, date]) -> None:
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


def params_for(organization_id: int, period: date, limits, group: list[Queued], pending) -> dict:
    """The statement's parameters for a group of asks under `limits` (request, token);
    `pending`: the settlements to apply, as (generation, *deltas)."""
    leasing = [queued.ask.now for queued in group if queued.lease != (0, 0)]
    return {
        "org": organization_id,
        "period": period,
        "now": max((queued.ask.now for queued in group), default=None) or utc(None),
        "sg": [s[0] for s in pending],
        "sdr": [s[1] for s in pending],
        "sdt": [s[2] for s in pending],
        "slr": [s[3] for s in pending],
        "slt": [s[4] for s in pending],
        "counts": [queued.count for queued in group],
        "estimates": [queued.ask.tokens for queued in group],
        "lcounts": [queued.lease[0] for queued in group],
        "lestimates": [queued.lease[1] for queued in group],
        "lease_until": (
            max(leasing) + timedelta(seconds=lease_hold_seconds()) if leasing else None
        ),
        "rl": limits[0],
        "tl": limits[1],
    }


def decide(group: list[Queued], row: tuple) -> None:
    """Each ask's QuotaDecision from the statement's steps."""
    oks, requests, tokens = (row[0] or [], row[1] or [], row[2] or [])
    leased_requests, leased_tokens = (row[3] or [], row[4] or [])
    generation, leased_until = row[5], row[6]
    steps = zip(group, oks, requests, tokens, leased_requests, leased_tokens, strict=True)
    for queued, ok, used_requests, used_tokens, lr, lt in steps:
        ask, used = queued.ask, (used_requests, used_tokens)
        exceeded = retry_after = None
        if not ok:
            exceeded = exceeded_limit(
                used_requests + queued.count - 1, used_tokens, *ask.limits, max(ask.tokens, 1)
            )
            retry_after = lease_retry_after(
                ask, used=used, leased=(lr, lt), leased_until=leased_until, count=queued.count
            )
        if not queued.future.done():
            queued.future.set_result(
                decision_for(
                    ask,
                    allowed=bool(ok),
                    exceeded=exceeded,
                    used=used,
                    counted=bool(ok),
                    generation=generation,
                    retry_after=retry_after,
                )
            )
