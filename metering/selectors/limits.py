"""Limit reads: what remains of a key's windows and of the monthly quota, for /v1/key and the
dashboard."""

from django.utils import timezone

from accounts.models import Organization
from metering.selectors.usage import month_period, usage_totals

WINDOW_LIMITS = ("requests_per_minute", "requests_per_day", "tokens_per_minute", "tokens_per_day")
QUOTA_LIMITS = ("monthly_request_quota", "monthly_token_quota")
BURST_LIMITS = ("burst_requests", "burst_tokens")  # metering/limiter/windows.py: only with a burst


def key_windows(context) -> list:
    """The key's rate-limit windows now (limiter.WindowState), read without counting: one Redis
    round trip (none without limits)."""
    from metering import limiter

    limits = limiter.limits_for(context.limits)
    return limiter.peek(context.key_id, limits) if limits else []


def key_rate_limit_headers(context, windows: list | None = None) -> dict[str, str]:
    """DESIGN.md's rate-limit headers for a /v1 response to this key (none for a key without
    limits): the same as the inference endpoints send, read without counting."""
    from metering.admission import rate_limit_headers

    return rate_limit_headers(key_windows(context) if windows is None else windows)


def key_limit_status(context, windows: list | None = None) -> dict:
    """Each limit of a key (a keys.verification.KeyContext) and what remains of it, for GET
    /v1/key: `{"limits": {limit: n | None}, "remaining": {...}, "reset_seconds": {...}}`, None =
    unlimited. `limits` are the ones the limiter enforces: with a burst, the raised per-minute
    limits, and the burst windows (`burst_requests`, `burst_tokens`) beside them, so each
    `remaining` counts against the limit shown next to it. Reads the windows without counting
    (one Redis round trip) and the month's quota row."""
    from metering import limiter, quota

    limits: dict[str, int | None] = dict(context.limits)
    for enforced in limiter.limits_for(context.limits):
        limits[enforced.name] = enforced.limit  # raised per-minute limits; burst windows
    names = [*WINDOW_LIMITS, *QUOTA_LIMITS, *(b for b in BURST_LIMITS if b in limits)]
    remaining: dict[str, int | None] = dict.fromkeys(names)
    reset: dict[str, int | None] = dict.fromkeys(names)
    for window in key_windows(context) if windows is None else windows:
        name = window.limit.name
        if name not in remaining:
            continue
        remaining[name] = window.remaining
        reset[name] = -(-window.reset_ms // 1000)
    request_quota = context.limits.get("monthly_request_quota")
    token_quota = context.limits.get("monthly_token_quota")
    if request_quota is not None or token_quota is not None:
        _, used_requests, used_tokens = quota.quota_usage(context.organization_id)
        _, end = month_period()
        until_month_end = int((end - timezone.now()).total_seconds()) + 1
        if request_quota is not None:
            remaining["monthly_request_quota"] = max(0, request_quota - used_requests)
            reset["monthly_request_quota"] = until_month_end
        if token_quota is not None:
            remaining["monthly_token_quota"] = max(0, token_quota - used_tokens)
            reset["monthly_token_quota"] = until_month_end
    return {"limits": limits, "remaining": remaining, "reset_seconds": reset}


def _meter(used: int, limit: int | None) -> dict:
    percent = None if not limit else min(100, round(100 * used / limit))
    return {"used": used, "limit": limit, "percent": percent}


def organization_month_counters(organization: Organization) -> dict:
    """This month's counters of the overview (and of its live refresh): billable requests and
    their tokens against the organization's quota, spend at list prices, refusals. One query, on the
    rollups (the numbers of GET /v1/usage); no raw events, no Redis."""
    quotas = organization.quota_limits()  # an operator's custom quotas, else the plan's
    start, end = month_period()
    month = usage_totals(organization=organization, start=start, end=end)
    requests = _meter(month["requests"], quotas["monthly_request_quota"])
    tokens = _meter(month["input_tokens"] + month["output_tokens"], quotas["monthly_token_quota"])
    return {
        "period_start": start,
        "period_end": end,
        "requests": requests,
        "tokens": tokens,
        "cost": month["cost"],
        "refused": month["refused"],
        "errors": month["errors"],
        # (name in the live refresh, label, meter)
        "meters": [
            ("requests", "Requests this month", requests),
            ("tokens", "Tokens this month", tokens),
        ],
    }


def organization_limit_overview(organization: Organization) -> dict:
    """The dashboard's view of limits: the month's counters (organization_month_counters), and
    each live key's usage of its per-day windows today (the last 24 h, sliding)."""
    from keys.models import ApiKey
    from metering import limiter

    plan = organization.plan
    keys = []
    for key in ApiKey.objects.filter(organization=organization, revoked_at__isnull=True).order_by(
        "name", "id"
    )[:50]:
        limits = limiter.limits_for(key.effective_limits(plan, organization))
        windows = {w.limit.name: w for w in limiter.peek(key.key_id, limits)}
        meters = []
        for name in ("requests_per_day", "tokens_per_day", "requests_per_minute"):
            window = windows.get(name)
            meters.append(_meter(window.used, window.limit.limit) if window else _meter(0, None))
        keys.append({"key": key, "meters": meters})
    return {**organization_month_counters(organization), "keys": keys}
