"""The 429s of admission (and its 503 when the quota cannot be checked), in OpenAI's shape with
Retry-After and the rate-limit headers, and their audit: at most one event per key and minute
(across processes, by a cache claim), written off the event loop.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import connections

from infra.db import when_unlocked
from infra.errors import ApplicationError
from metering import quota
from metering.ip_limit import current_rate
from metering.limit_headers import duration, retry_seconds

logger = logging.getLogger(__name__)

RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
INSUFFICIENT_QUOTA = "insufficient_quota"


class LimitRefusal(ApplicationError):
    """A 429 of admission, naming its limit: `limit` ip, rate or quota (the /v1 requests'
    outcome), `limit_name` the very window or quota (the limiter's decisions)."""

    def __init__(self, code: str, message: str, *, limit: str, limit_name: str, **kwargs) -> None:
        super().__init__(code, message, status=429, **kwargs)
        self.limit = limit
        self.limit_name = limit_name


_LIMIT_WORDS = {
    "requests_per_minute": "requests per minute",
    "requests_per_day": "requests per day",
    "tokens_per_minute": "tokens per minute",
    "tokens_per_day": "tokens per day",
    "burst_requests": "requests per burst window",
    "burst_tokens": "tokens per burst window",
}


def ip_refusal(retry: int) -> ApplicationError:
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


def window_refusal(context, decision, tokens: int, headers, client_ip) -> ApplicationError:
    refused = decision.refused_by
    retry = retry_seconds(decision.retry_after_ms, refused.window_ms)
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


def quota_refusal(context, verdict, headers, client_ip) -> ApplicationError:
    if isinstance(verdict, quota.QuotaUnavailable):
        error = quota.QuotaUnavailable(verdict.detail)  # its own: headers differ per request
        error.headers = {**headers, **error.headers}
        return error
    limit = verdict.request_limit if verdict.exceeded == "requests" else verdict.token_limit
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
