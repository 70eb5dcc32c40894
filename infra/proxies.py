"""Which peers may tell us the client's address: CLIENT_IP_PROXIES, read here and only here.

The app server (deploy/gunicorn.conf.py → uvicorn's proxy headers) and the app (infra.http)
both use this list, so they agree on every request. Empty, the default, trusts nobody: the
client is the socket peer and X-Forwarded-For is ignored. No Django: the gunicorn config imports
it before any settings exist.
"""

import ipaddress
import os
from functools import lru_cache

ENV_NAME = "CLIENT_IP_PROXIES"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(value: str) -> list[str]:
    """The networks in a comma-separated CLIENT_IP_PROXIES value, canonical ("10.0.0.0/8",
    "127.0.0.1/32"). ValueError, with a message fit for an operator, for anything else."""
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError:
            hint = ""
            if item.isdigit():
                hint = (
                    " (it used to be a number of proxies; it is now the addresses of your "
                    "proxies, e.g. 10.0.0.0/8)"
                )
            elif item == "*":
                hint = " (name your proxies' networks; 0.0.0.0/0,::/0 trusts every peer)"
            raise ValueError(
                f"{ENV_NAME} must be comma-separated IP addresses or networks of the proxies "
                f"in front of aibaas, like 10.0.0.0/8,127.0.0.1; {item!r} is not one{hint}."
            ) from None
    return networks


def proxies_from_env() -> list[str]:
    return parse_proxies(os.environ.get(ENV_NAME, ""))


class TrustedProxies:
    """The client address of a request: X-Forwarded-For read from the right for as long as
    the hop that wrote an entry is one of our proxies (the rule uvicorn's proxy headers follow,
    so a request the app server already rewrote comes out unchanged)."""

    def __init__(self, networks: list[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)
        self.trusts = lru_cache(maxsize=4096)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The first address, from the right, not written by one of our proxies; the peer when
        the peer is not one of them (what it sent in X-Forwarded-For is then the client's own
        text). Returns a raw string: the caller canonicalizes and rejects non-addresses."""
        if not self.networks or not peer or not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        hops = [hop for hop in hops if hop]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        # Every hop is a proxy of ours: the leftmost is the furthest we know.
        return hops[0] if hops else peer
