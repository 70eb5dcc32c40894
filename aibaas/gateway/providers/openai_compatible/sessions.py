"""The upstream connection pools: one pooled aiohttp `ClientSession` per event loop, with
keep-alive connections per upstream. aiohttp rather than httpx, measured:
docs/gateway-performance.md.
"""

import asyncio

import aiohttp

MAX_CONNECTIONS = 1000

# event loop id -> session. A session belongs to the loop that made it.
_sessions: dict[int, aiohttp.ClientSession] = {}


def _session() -> aiohttp.ClientSession:
    loop_id = id(asyncio.get_running_loop())
    session = _sessions.get(loop_id)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300
        )
        session = _sessions[loop_id] = aiohttp.ClientSession(
            connector=connector,
            raise_for_status=False,
            auto_decompress=True,
            # One session serves every customer: a cookie a model server sets must not ride
            # along on another customer's request (and no jar to filter per request).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    return session


async def close_sessions() -> None:
    """Close the session of the running loop (tests, shutdown)."""
    session = _sessions.pop(id(asyncio.get_running_loop()), None)
    if session is not None:
        await session.close()
