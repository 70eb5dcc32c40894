"""The rate-limit headers of a /v1 reply (DESIGN.md: X-RateLimit-* and OpenAI's
x-ratelimit-*), for the tightest window of each kind, and Retry-After's whole seconds."""

import math


def retry_seconds(ms: int, window_ms: int) -> int:
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
