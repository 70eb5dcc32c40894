"""Small request helpers shared by views, APIs and the gateway. The ones over a header mapping
(`get()` by lower-case name: Django's `request.headers` or the /v1 ASGI handler's dict) are the
single copy both paths use."""

import ipaddress
from collections.abc import Mapping

from django.conf import settings
from django_ratelimit.core import _split_rate, get_usage

from infra.errors import ApplicationError, method_not_allowed
from infra.memo import per_settings
from infra.proxies import TrustedProxies

USER_AGENT_MAX = 300


def pick_client_ip(peer: str | None, forwarded_for: str | None) -> str | None:
    """The client address, canonical: the socket `peer`, or when the peer is one of our proxies
    (CLIENT_IP_PROXIES), the address they saw in `forwarded_for` (X-Forwarded-For). Anything
    that is not an address falls back to the peer."""
    candidate = _trusted_proxies().client(peer, forwarded_for)
    address = canonical_ip(candidate.strip()) if candidate else None
    if address is None and candidate != peer and peer:
        address = canonical_ip(peer.strip())
    return address


@per_settings
def _trusted_proxies() -> TrustedProxies:
    return TrustedProxies(settings.CLIENT_IP_PROXIES)


_canonical_addresses: dict[str, str | None] = {}


def canonical_ip(value: str | None) -> str | None:
    """`value` as one way of writing its address (None if it is none), remembered: clients
    repeat themselves, and parsing an address costs more than the rest of a usage event."""
    if not value:
        return None
    address = _canonical_addresses.get(value, "")
    if address == "":
        try:
            address = str(ipaddress.ip_address(value))
        except ValueError:
            address = None
        if len(value) <= 64:  # an address; a longer value is not worth keeping
            if len(_canonical_addresses) >= 10_000:
                _canonical_addresses.clear()
            _canonical_addresses[value] = address
    return address


def client_address(peer: str | None, headers: Mapping[str, str]) -> str | None:
    """The client address of a request from socket `peer` with these headers (X-Forwarded-For
    believed only from CLIENT_IP_PROXIES): what rate limits, usage events and the audit log see."""
    return pick_client_ip(peer, headers.get("x-forwarded-for"))


def client_ip(request) -> str | None:
    """The client address of a Django request (client_address over its headers)."""
    return client_address(request.META.get("REMOTE_ADDR"), request.headers)


def method_refusal(method: str, allowed: str) -> ApplicationError | None:
    """None when `method` may call an endpoint answering `allowed` (HEAD too where GET is),
    else the 405 to answer."""
    if method == allowed or (method == "HEAD" and allowed == "GET"):
        return None
    return method_not_allowed(allowed)


def ratelimit_ip(request) -> str:
    """django-ratelimit's RATELIMIT_IP_META_KEY: the same address as everything else (it
    would take a whole X-Forwarded-For list as one address, and fail on it)."""
    return client_ip(request) or "0.0.0.0"  # noqa: S104 (no address: one shared bucket)


TOO_MANY_ATTEMPTS = "Too many attempts from your address."  # the detail of a per-IP 429


def ratelimit_retry_after(request, *, group: str, rate, key: str = "ip", method="POST") -> int:
    """Retry-After of a django-ratelimit refusal: whole seconds until the client's current
    window of that limit ends (its next request then counts afresh), at most the rate's period.
    `rate` as given to @ratelimit (a string or a callable (group, request))."""
    rate_value = rate(group, request) if callable(rate) else rate
    _, period = _split_rate(rate_value)
    usage = get_usage(request, group=group, key=key, rate=rate_value, method=method)
    if not usage or usage["time_left"] < 0:  # cache unreachable: no window to report
        return period
    # The window's last whole second still counts against the limit: the next one is free.
    return min(usage["time_left"] + 1, period)


def user_agent(request) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:USER_AGENT_MAX]
