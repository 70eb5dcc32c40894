"""Small request helpers shared by views, APIs and the gateway."""

from django.conf import settings

USER_AGENT_MAX = 300


def client_ip(request) -> str | None:
    """The client address, from the same trusted source as the rate limiters."""
    meta_key = settings.RATELIMIT_IP_META_KEY
    value = request.META.get(meta_key) or request.META.get("REMOTE_ADDR") or ""
    if meta_key == "HTTP_X_FORWARDED_FOR":
        value = value.split(",")[0]
    return value.strip() or None


def user_agent(request) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:USER_AGENT_MAX]
