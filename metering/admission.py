"""Admission of one /v1 inference request: the per-IP layer, the key's sliding windows and the
organization's monthly quota, then settlement with the tokens really used. The gateway imports
metering through this module alone.

The checks are sent together (per-IP and windows in one Redis round trip; the quota alongside
while this process last saw the organization far from it, after them near it); the per-IP
refusal wins over every other answer. Invariant: a request refused by one check counts nowhere
(what another check counted is given back). The quota's tokens are settled where the usage
event is stored (metering.usage.usage_record), exactly once. Refusals (refusals.py): 429 with
Retry-After, or 503 when the quota cannot be checked. Precedence and reasoning: docs/limiter.md.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date

from infra import metrics
from infra.background import background
from infra.errors import ApplicationError
from metering import limiter, quota
from metering.ip_limit import ip_check_finish, ip_check_start
from metering.limit_headers import rate_limit_headers
from metering.refusals import ip_refusal, quota_refusal, window_refusal
from metering.usage import (
    INTERRUPTED,
    INTERRUPTED_STATUS,
    UsageEventData,
    ausage_emit,
    inflight,
    marker,
)

__all__ = [
    "INTERRUPTED",
    "INTERRUPTED_STATUS",
    "Admission",
    "IpGate",
    "UsageEventData",
    "aadmit",
    "ashutdown",
    "ausage_emit",
    "inflight",
    "limiter",
    "marker",
    "rate_limit_headers",
]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Admission:
    """What was admitted for one request, to settle once its usage is known."""

    key_id: str
    organization_id: int
    limits: list
    estimate: int
    decision: "limiter.Decision | None" = None
    quota_period: date | None = None
    quota_leased: bool = False
    quota_generation: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False

    async def asettle(self, actual_tokens: int) -> None:
        """Move the token windows from the estimate to `actual_tokens`, pipelined with whatever
        the loop sends meanwhile (the request's usage event). The monthly quota's tokens are
        settled by usage_record when the event is stored (the event carries quota_period,
        quota_generation and the estimate): exactly once, however often the event is sent."""
        if self.settled:
            return
        self.settled = True
        delta = actual_tokens - self.estimate
        if not delta:
            return
        if self.decision is not None and any(lim.kind == "tokens" for lim in self.limits):
            try:
                await limiter.asettle(
                    self.key_id, self.limits, admitted_at_ms=self.decision.at_ms, token_delta=delta
                )
            except Exception:
                logger.exception(
                    "settling the windows of key %s failed (delta %s)", self.key_id, delta
                )


class IpGate:
    """The per-IP check of one request, made once. Admission starts it together with the key's
    windows (one Redis round trip for both); a request that fails before admission (bad key,
    bad body) makes it alone before answering. Its refusal wins over every other answer: the
    request is then refused before anything else counted it (what the other checks counted is
    given back)."""

    __slots__ = ("ip", "retry", "started")

    def __init__(self, ip: str | None) -> None:
        self.ip = ip
        self.started = None
        self.retry: int | None = None  # None: not answered yet

    def start(self) -> None:
        """Count the request now (pipelined with whatever the caller sends before awaiting)."""
        if self.started is None and self.retry is None:
            try:
                self.started = ip_check_start(self.ip)
            except Exception:
                logger.warning("per-IP rate limit unavailable; skipped", exc_info=True)
                self.retry = 0

    async def refusal(self) -> ApplicationError | None:
        """The 429 of this address, or None when it may go on."""
        if self.retry is None:
            self.start()
        if self.retry is None:
            self.retry = 0  # answered once, even if the check fails
            try:
                self.retry = await ip_check_finish(self.started)
            except Exception:
                logger.warning("per-IP rate limit unavailable; skipped", exc_info=True)
        return ip_refusal(self.retry) if self.retry else None


# --- admission --------------------------------------------------------------------------------
# The monthly quota is asked alongside the key's windows (one wait instead of two) while this
# process last saw the organization far from it (quota.far_from_quota): then a quota admission
# given back because the windows refused changes nothing anyone else sees. Near the quota, it
# is asked after the windows, so that only requests the windows admitted ever count in it.


def _quota_ask(context, tokens: int) -> "quota.QuotaAsk | None":
    """The request's ask of its organization's monthly quota; None when it has none."""
    request_quota = context.limits.get("monthly_request_quota")
    token_quota = context.limits.get("monthly_token_quota")
    if request_quota is None and token_quota is None:
        return None
    return quota.QuotaAsk(context.organization_id, request_quota, token_quota, tokens)


async def _quota_finish(pending):
    """The quota's verdict, or the QuotaUnavailable it raised (returned, not raised)."""
    try:
        return await pending
    except quota.QuotaUnavailable as error:
        return error


def _allowed(verdict) -> bool:
    return isinstance(verdict, quota.QuotaDecision) and verdict.allowed


def _counted(verdict) -> bool:
    """The quota admitted the request and counted it (so it is to be settled or given back)."""
    return _allowed(verdict) and verdict.counted


async def aadmit(
    context, *, tokens: int, client_ip: str | None = None, gate: "IpGate | None" = None
) -> Admission:
    """Admit one request of this key estimated at `tokens`, or raise a 429 (503 when the quota
    cannot be checked and QUOTA_FAIL_OPEN is off). `gate`: the request's per-IP check (made
    here if not yet). A refused request counts nowhere: what a check admitted before another
    refused is given back."""
    gate = gate if gate is not None else IpGate(client_ip)
    limits = limiter.limits_for(context.limits)
    ask = _quota_ask(context, tokens)
    admission = Admission(context.key_id, context.organization_id, limits, tokens)
    # Everything asked at once, then awaited: the per-IP counters and the key's windows share
    # one Redis round trip, and the quota's statement runs meanwhile when far from the quota.
    gate.start()
    windows = limiter.check_start(context.key_id, limits, tokens=tokens) if limits else None
    together = ask is not None and (not limits or quota.far_from_quota(ask))
    pending_quota = quota.aquota_admit_start(ask) if together else None
    try:
        error = await gate.refusal()
        if windows is not None:
            admission.decision = await limiter.check_finish(windows)
            admission.headers = rate_limit_headers(admission.decision.windows)
        verdict = await _quota_finish(pending_quota) if together else None
        if error is None and admission.decision is not None and not admission.decision.allowed:
            decision, headers = admission.decision, admission.headers
            error = window_refusal(context, decision, tokens, headers, client_ip)
        if error is None and ask is not None and not together:
            pending_quota = quota.aquota_admit_start(ask)
            verdict = await _quota_finish(pending_quota)
        if error is None and verdict is not None and not _allowed(verdict):
            error = quota_refusal(context, verdict, admission.headers, client_ip)
        _count_decision(error)
        if error is not None:
            await _refused(admission, verdict)
            raise error
        if _counted(verdict):
            admission.quota_period = verdict.period
            admission.quota_leased = verdict.leased
            admission.quota_generation = verdict.generation
        return admission
    except asyncio.CancelledError:
        # The client hung up while its request was being admitted: what admitted it keeps the
        # request (it was made; its usage event says 499) but not its token estimate.
        background(_abandoned(admission, windows, pending_quota, tokens))
        raise


def _count_decision(error) -> None:
    """The limiter's decision: admitted, or refused by a limit (or the quota unreadable)."""
    limit_name = getattr(error, "limit_name", "quota_unavailable")
    metrics.child(
        metrics.LIMITER_DECISIONS,
        "admitted" if error is None else "refused",
        "none" if error is None else limit_name,
    ).inc()


async def _refused(admission: Admission, verdict) -> None:
    """Give back what the checks counted for a request refused by another."""
    await _release(admission)
    if _counted(verdict):
        await quota.aquota_settle(
            admission.organization_id,
            period=verdict.period,
            request_delta=-1,
            token_delta=-admission.estimate,
            leased=verdict.leased,
            generation=verdict.generation,
            wait=False,
        )


async def _abandoned(admission: Admission, windows, pending_quota, tokens: int) -> None:
    try:
        decision = admission.decision
        if decision is None and windows is not None:
            decision = await limiter.check_finish(windows)
        if decision is not None and decision.allowed and tokens:
            await limiter.asettle(
                admission.key_id,
                admission.limits,
                admitted_at_ms=decision.at_ms,
                token_delta=-tokens,
            )
        verdict = await _quota_finish(pending_quota) if pending_quota is not None else None
        if _counted(verdict):
            await quota.aquota_settle(
                admission.organization_id,
                period=verdict.period,
                token_delta=-tokens,
                leased=verdict.leased,
                generation=verdict.generation,
                wait=False,
            )
    except Exception:
        logger.exception("settling the admission of an abandoned request failed")


async def _release(admission: Admission) -> None:
    """Give back what the windows counted for a request refused later (by the quota)."""
    if admission.decision is None or not admission.decision.allowed:
        return
    admission.settled = True
    try:
        await limiter.asettle(
            admission.key_id,
            admission.limits,
            admitted_at_ms=admission.decision.at_ms,
            request_delta=-1,
            token_delta=-admission.estimate,
        )
    except Exception:
        logger.exception("releasing the windows of key %s failed", admission.key_id)


async def ashutdown() -> None:
    """The server's shutdown: send the rate-limit settlements still pending, give the quota's
    leases back, then flush and close this loop's quota connections."""
    await limiter.aflush_settlements()
    await quota.aclose()
