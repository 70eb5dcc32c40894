"""Admission of one /v1 inference request: the per-IP layer, the key's sliding windows and the
organization's monthly quota, then settlement with the tokens really used.

The checks are sent together (per-IP and windows in one Redis round trip; the quota alongside
while this process last saw the organization far from it, after them near it); the per-IP
refusal wins over every other answer. Invariant: a request refused by one check counts nowhere
(what another check counted is given back). `Admission.asettle` moves the token windows to the
tokens used; the quota's tokens are settled where the usage event is stored
(metering.usage.usage_record), exactly once. Refusals: 429 with Retry-After,
`rate_limit_exceeded` (windows, per-IP) or `insufficient_quota`; at most one audit event per key
and minute. Precedence and reasoning: docs/limiter.md.
"""

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import connections

from infra import metrics
from infra.background import background
from infra.db import when_unlocked
from infra.errors import ApplicationError
from metering import limiter, quota
from metering.ip_limit import current_rate, ip_check_finish, ip_check_start
from metering.usage import (
    INTERRUPTED,
    INTERRUPTED_STATUS,
    UsageEventData,
    ausage_emit,
    inflight,
    marker,
)

# The gateway's hot path imports metering through this module alone.
__all__ = [
    "INTERRUPTED",
    "INTERRUPTED_STATUS",
    "Admission",
    "IpGate",
    "UsageEventData",
    "aadmit",
    "ausage_emit",
    "inflight",
    "limiter",
    "marker",
    "rate_limit_headers",
]

logger = logging.getLogger(__name__)

RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
INSUFFICIENT_QUOTA = "insufficient_quota"

_LIMIT_WORDS = {
    "requests_per_minute": "requests per minute",
    "requests_per_day": "requests per day",
    "tokens_per_minute": "tokens per minute",
    "tokens_per_day": "tokens per day",
    "burst_requests": "requests per burst window",
    "burst_tokens": "tokens per burst window",
}


class LimitRefusal(ApplicationError):
    """A 429 of admission, naming its limit: `limit` ip, rate or quota (the /v1 requests'
    outcome), `limit_name` the very window or quota (the limiter's decisions)."""

    def __init__(self, code: str, message: str, *, limit: str, limit_name: str, **kwargs) -> None:
        super().__init__(code, message, status=429, **kwargs)
        self.limit = limit
        self.limit_name = limit_name


def _seconds(ms: int, window_ms: int) -> int:
    """Retry-After: whole seconds, rounded up, at least 1, never more than the window."""
    return min(max(1, math.ceil(ms / 1000)), math.ceil(window_ms / 1000))


def duration(ms: int) -> str:
    """OpenAI's x-ratelimit-reset-* format: "20ms", "1s", "6m0s", "1h2m3s"."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _tightest(windows: list, kind: str):
    """The window of this kind with the least remaining (the smaller limit on a tie)."""
    candidates = [w for w in windows if w.limit.kind == kind]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (w.remaining, w.limit.limit))


def rate_limit_headers(windows: list) -> dict[str, str]:
    """DESIGN.md's headers for these window states (none for unlimited kinds)."""
    headers: dict[str, str] = {}
    requests = _tightest(windows, "requests")
    if requests is not None:
        headers["X-RateLimit-Limit"] = str(requests.limit.limit)
        headers["X-RateLimit-Remaining"] = str(requests.remaining)
        headers["X-RateLimit-Reset"] = str(math.ceil(requests.reset_ms / 1000))
        headers["x-ratelimit-limit-requests"] = str(requests.limit.limit)
        headers["x-ratelimit-remaining-requests"] = str(requests.remaining)
        headers["x-ratelimit-reset-requests"] = duration(requests.reset_ms)
    tokens = _tightest(windows, "tokens")
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(tokens.limit.limit)
        headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
        headers["x-ratelimit-reset-tokens"] = duration(tokens.reset_ms)
    return headers


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


# --- per-IP layer (metering/ip_limit.py) -------------------------------------------------------


def _ip_refusal(retry: int) -> ApplicationError:
    limit = str((current_rate() or (0, 0))[0])
    return LimitRefusal(
        RATE_LIMIT_EXCEEDED,
        f"Too many requests from your address (limit {settings.GATEWAY_IP_RATE} per IP). "
        f"Retry in {retry} s.",
        limit="ip",
        limit_name="ip",
        extra={"retry_after": retry},
        # The address's limit is the tightest one here: the headers say so, as for a key's.
        headers={
            "Retry-After": str(retry),
            "X-RateLimit-Limit": limit,
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(retry),
            "x-ratelimit-limit-requests": limit,
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": duration(retry * 1000),
        },
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
        return _ip_refusal(self.retry) if self.retry else None


# --- audit of refusals, one per key and minute ------------------------------------------------

_audit_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="limit-audit")
_audited: dict[str, int] = {}
_audited_lock = threading.Lock()


def _audit_refusal(context, code: str, limit_name: str, retry_after: int, ip: str | None):
    minute = int(time.time() // 60)
    with _audited_lock:
        if _audited.get(context.key_id) == minute:
            return
        if len(_audited) > 50_000:
            _audited.clear()
        _audited[context.key_id] = minute
    _audit_executor.submit(_write_refusal, context, code, limit_name, retry_after, ip, minute)


def _write_refusal(context, code, limit_name, retry_after, ip, minute) -> None:
    from accounts.actors import Actor
    from accounts.audit import audit_record, key_label
    from accounts.models import AuditAction, Organization

    try:
        # Across processes: the first to claim this key's minute writes the event.
        if not cache.add(f"rl-audit:{{{context.key_id}}}:{minute}", 1, 120):
            return
        when_unlocked(
            lambda: audit_record(
                action=AuditAction.RATE_LIMIT_REFUSED,
                actor=Actor(key_id=context.key_id, ip=ip),
                organization=Organization(pk=context.organization_id),
                target_type="api_key",
                target_id=context.key_id,
                target_label=key_label(context.name, context.key_id),
                metadata={"code": code, "limit": limit_name, "retry_after": retry_after},
            )
        )
    except Exception:
        logger.warning("could not audit the refusal of key %s", context.key_id, exc_info=True)
    finally:
        connections.close_all()  # rare (one per key and minute): no connection kept idle


def flush_audit() -> None:
    """Wait for refusal audit events queued so far (tests, shutdown)."""
    _audit_executor.submit(lambda: None).result(timeout=10)


def reset_audit_dedup() -> None:
    with _audited_lock:
        _audited.clear()


# --- admission --------------------------------------------------------------------------------


# The monthly quota is asked alongside the key's windows (one wait instead of two) while this
# process last saw the organization far from it (quota.far_from_quota): then a quota admission
# given back because the windows refused changes nothing anyone else sees. Near the quota, it
# is asked after the windows, so that only requests the windows admitted ever count in it.


def _quota_start(context, request_quota, token_quota, tokens):
    return quota.aquota_admit_start(
        context.organization_id,
        request_limit=request_quota,
        token_limit=token_quota,
        tokens=tokens,
    )


async def _quota_finish(pending):
    """The quota's verdict, or the QuotaUnavailable it raised (returned, not raised)."""
    try:
        return await pending
    except quota.QuotaUnavailable as error:
        return error


def _counted(verdict) -> bool:
    """The quota admitted the request and counted it (so it is to be settled or given back)."""
    return isinstance(verdict, quota.QuotaDecision) and verdict.allowed and verdict.counted


def _window_refusal(context, decision, tokens: int, headers, client_ip) -> ApplicationError:
    refused = decision.refused_by
    retry = _seconds(decision.retry_after_ms, refused.window_ms)
    words = _LIMIT_WORDS.get(refused.name, refused.name)
    if refused.kind == "tokens" and tokens > refused.limit:
        message = (
            f"Request too large: it needs about {tokens} tokens and this key's limit is "
            f"{refused.limit} {words}. Send less, or lower max_tokens."
        )
    else:
        message = f"Rate limit reached: {refused.limit} {words} for this key. Retry in {retry} s."
    _audit_refusal(context, RATE_LIMIT_EXCEEDED, refused.name, retry, client_ip)
    return LimitRefusal(
        RATE_LIMIT_EXCEEDED,
        message,
        limit="rate",
        limit_name=refused.name,
        extra={"retry_after": retry},
        headers={**headers, "Retry-After": str(retry)},
    )


def _quota_refusal(context, verdict, request_quota, token_quota, headers, client_ip):
    if isinstance(verdict, quota.QuotaUnavailable):
        error = quota.QuotaUnavailable(verdict.detail)  # its own: headers differ per request
        error.headers = {**headers, **error.headers}
        return error
    limit = request_quota if verdict.exceeded == "requests" else token_quota
    used = verdict.requests_used if verdict.exceeded == "requests" else verdict.tokens_used
    resets = verdict.resets_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    limit_name = f"monthly_{verdict.exceeded}_quota"
    _audit_refusal(context, INSUFFICIENT_QUOTA, limit_name, verdict.retry_after, client_ip)
    month_left = (verdict.resets_at - datetime.now(UTC)).total_seconds()
    if verdict.retry_after < month_left - 1:
        # The last room is held by another server's lease, which goes back within seconds.
        message = (
            f"Monthly quota nearly spent: {used} of {limit} {verdict.exceeded} used or held by "
            f"your organization's requests in flight. Retry in {verdict.retry_after} s."
        )
    else:
        message = (
            f"Monthly quota exceeded: {used} of {limit} {verdict.exceeded} used this month by "
            f"your organization. It resets at {resets}; upgrade your plan for more."
        )
    return LimitRefusal(
        INSUFFICIENT_QUOTA,
        message,
        limit="quota",
        limit_name=limit_name,
        extra={"retry_after": verdict.retry_after},
        headers={**headers, "Retry-After": str(verdict.retry_after)},
    )


async def aadmit(
    context, *, tokens: int, client_ip: str | None = None, gate: IpGate | None = None
) -> Admission:
    """Admit one request of this key estimated at `tokens`, or raise a 429 (503 when the quota
    cannot be checked and QUOTA_FAIL_OPEN is off). `gate`: the request's per-IP check (made
    here if not yet). A refused request counts nowhere: what a check admitted before another
    refused is given back."""
    gate = gate if gate is not None else IpGate(client_ip)
    limits = limiter.limits_for(context.limits)
    request_quota = context.limits.get("monthly_request_quota")
    token_quota = context.limits.get("monthly_token_quota")
    has_quota = request_quota is not None or token_quota is not None
    admission = Admission(
        key_id=context.key_id,
        organization_id=context.organization_id,
        limits=limits,
        estimate=tokens,
    )
    # Everything asked at once, then awaited: the per-IP counters and the key's windows share
    # one Redis round trip, and the quota's statement runs meanwhile when far from the quota.
    gate.start()
    windows = limiter.check_start(context.key_id, limits, tokens=tokens) if limits else None
    together = has_quota and (
        not limits
        or quota.far_from_quota(
            context.organization_id,
            request_limit=request_quota,
            token_limit=token_quota,
            tokens=tokens,
        )
    )
    pending_quota = _quota_start(context, request_quota, token_quota, tokens) if together else None
    try:
        refusal = await gate.refusal()
        if windows is not None:
            admission.decision = await limiter.check_finish(windows)
            admission.headers = rate_limit_headers(admission.decision.windows)
        verdict = await _quota_finish(pending_quota) if together else None

        error = refusal
        if error is None and admission.decision is not None and not admission.decision.allowed:
            error = _window_refusal(
                context, admission.decision, tokens, admission.headers, client_ip
            )
        if error is None and has_quota and not together:
            pending_quota = _quota_start(context, request_quota, token_quota, tokens)
            verdict = await _quota_finish(pending_quota)
        if (
            error is None
            and verdict is not None
            and not (isinstance(verdict, quota.QuotaDecision) and verdict.allowed)
        ):
            error = _quota_refusal(
                context, verdict, request_quota, token_quota, admission.headers, client_ip
            )
        # The limiter's decision: admitted, or refused by a limit (or the quota unreadable).
        limit_name = getattr(error, "limit_name", "quota_unavailable")
        metrics.child(
            metrics.LIMITER_DECISIONS,
            "admitted" if error is None else "refused",
            "none" if error is None else limit_name,
        ).inc()
        if error is not None:
            await _release(admission)
            if _counted(verdict):
                await quota.aquota_settle(
                    context.organization_id,
                    period=verdict.period,
                    request_delta=-1,
                    token_delta=-tokens,
                    leased=verdict.leased,
                    generation=verdict.generation,
                    wait=False,
                )
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
