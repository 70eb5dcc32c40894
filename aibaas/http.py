"""Small request helpers shared by views, APIs and the gateway."""

import ipaddress

from django.conf import settings

USER_AGENT_MAX = 300
FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"


def pick_client_ip(value: str | None, peer: str | None, *, forwarded_for: bool) -> str | None:
    """The client address, canonical, from the configured header's `value` (None: no header
    configured or sent) else the socket `peer`.

    X-Forwarded-For is a list that every proxy appends the address it saw to; its first entries
    are whatever the client sent. The trusted one is the address the outermost of our own
    proxies saw: CLIENT_IP_PROXIES (default 1) from the right. Anything that is not an address
    falls back to the peer."""
    if value:
        if forwarded_for:
            hops = [part.strip() for part in value.split(",") if part.strip()]
            value = hops[-min(settings.CLIENT_IP_PROXIES, len(hops))] if hops else ""
        address = canonical_ip(value.strip())
        if address is not None:
            return address
    return canonical_ip(peer.strip()) if peer else None


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


def client_ip(request) -> str | None:
    """The client address, from the same trusted source as the rate limiters."""
    meta_key = settings.CLIENT_IP_META_KEY
    value = None if meta_key == "REMOTE_ADDR" else request.META.get(meta_key)
    return pick_client_ip(
        value, request.META.get("REMOTE_ADDR"), forwarded_for=meta_key == FORWARDED_FOR
    )


def ratelimit_ip(request) -> str:
    """django-ratelimit's RATELIMIT_IP_META_KEY: the same address as everything else (it
    would take a whole X-Forwarded-For list as one address, and fail on it)."""
    return client_ip(request) or "0.0.0.0"  # noqa: S104 (no address: one shared bucket)


def user_agent(request) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:USER_AGENT_MAX]
