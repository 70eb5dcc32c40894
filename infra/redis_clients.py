"""The process's Redis clients for REDIS_URL: one pooled sync client (per socket timeout) and one
asyncio client per event loop (an asyncio connection belongs to the loop that opened it:
uvicorn has one loop per process, tests start many).

The asyncio pool is bounded (REDIS_MAX_CONNECTIONS per loop) and callers wait for a free
connection. `apipelined(command, *args)` sends one command on the running loop's client,
pipelined: the commands issued while a pipeline is in flight go together in the next one (at
concurrency 1 a pipeline is one command; nothing waits). Used by the usage stream, the rate
limiter and the in-flight registry. Why, measured: docs/gateway-performance.md.
"""

import asyncio
import threading
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis
from django.conf import settings
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.background import background
from infra.breaker import breaker_for
from infra.loops import PerLoop, quiet_future

# What a call to an unreachable or failing Redis raises (asyncio's timeout is an OSError).
REDIS_ERRORS = (redis.RedisError, OSError)
SOCKET_CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 2.0
# Background work (the usage drain, the reaper, reconciliation) may wait for a busy Redis longer
# than a request would.
BACKGROUND_SOCKET_TIMEOUT = 10.0

_OPTIONS = {"socket_connect_timeout": SOCKET_CONNECT_TIMEOUT, "health_check_interval": 30}
_clients: dict[tuple[str, float], tuple[redis.Redis, int]] = {}  # (client, breaker's outages)
_aclients: dict[tuple[int, str], tuple[asyncio.AbstractEventLoop, aredis.Redis, int]] = {}
_lock = threading.Lock()


def max_connections() -> int:
    return settings.REDIS_MAX_CONNECTIONS


def redis_client(*, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """The process's pooled sync client (one per timeout: the usage drain waits longer). After
    an outage (infra/breaker.py) its connections of before are dropped, not reused."""
    key = (settings.REDIS_URL, socket_timeout)
    outages = breaker_for(key[0]).outages
    entry = _clients.get(key)
    if entry is None or entry[1] != outages:
        with _lock:
            entry = _clients.get(key)
            if entry is None:
                client = redis.Redis.from_url(
                    key[0], socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 1), **_OPTIONS
                )
                entry = _clients[key] = (client, outages)
            elif entry[1] != outages:
                entry[0].connection_pool.disconnect()
                entry = _clients[key] = (entry[0], outages)
    return entry[0]


class _HiredisPacking:
    """redis-py packs the commands of its asyncio connections in Python (its sync ones use
    hiredis when installed); hiredis does it in C: measured here, 6.2 µs against 0.7 µs for the
    limiter's EVALSHA, about a tenth of an admission's CPU."""

    def pack_command(self, *args) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD": a command name of several words
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:
            raise redis.DataError(str(error)) from error


_packed_classes: dict[type, type] = {}


def _packed(connection_class: type) -> type:
    packed = _packed_classes.get(connection_class)
    if packed is None:
        packed = type(
            f"HiredisPacked{connection_class.__name__}", (_HiredisPacking, connection_class), {}
        )
        _packed_classes[connection_class] = packed
    return packed


def aredis_client() -> aredis.Redis:
    """The asyncio client of the running event loop, on a bounded blocking pool. After an
    outage (infra/breaker.py) a new one: the old one's connections are closed, not reused."""
    loop = asyncio.get_running_loop()
    url = settings.REDIS_URL
    outages = breaker_for(url).outages
    entry = _aclients.get((id(loop), url))
    if entry is None or entry[0] is not loop or entry[2] != outages:
        for key, (other, *_) in list(_aclients.items()):
            if other.is_closed():
                del _aclients[key]
        if entry is not None and entry[0] is loop:
            background(entry[1].connection_pool.disconnect())
        entry = _aclients[(id(loop), url)] = (loop, _new_aclient(url), outages)
    return entry[1]


def _new_aclient(url: str) -> aredis.Redis:
    options = {
        "max_connections": max_connections(),
        "timeout": SOCKET_TIMEOUT,  # waiting for a free connection counts as a timeout
        "socket_timeout": SOCKET_TIMEOUT,
        **_OPTIONS,
        **parse_url(url),
    }
    options["connection_class"] = _packed(options.get("connection_class", Connection))
    pool = aredis.BlockingConnectionPool(**options)
    return aredis.Redis(connection_pool=pool, retry=AsyncRetry(NoBackoff(), 1))


class _Pipeliner:
    """The pipelined commands of one event loop (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[str, tuple, dict, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    def submit(self, command: str, args: tuple, kwargs: dict) -> asyncio.Future:
        future = quiet_future(self.loop)
        self.pending.append((command, args, kwargs, future))
        if self.task is None:
            self.task = self.loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    pipe = aredis_client().pipeline(transaction=False)
                    for command, args, kwargs, _ in batch:
                        getattr(pipe, command)(*args, **kwargs)
                    # Errors of single commands (NOSCRIPT, WRONGTYPE) come back in their place.
                    results = await pipe.execute(raise_on_error=False)
                except BaseException as error:  # the connection: every command of the batch
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(
                                error if isinstance(error, Exception) else ConnectionError()
                            )
                    if not isinstance(error, Exception):
                        raise
                    continue
                for (*_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.task = None


_pipeliners: PerLoop[_Pipeliner] = PerLoop(_Pipeliner)
_pipeliner = _pipeliners.get


def submit(command: str, *args, **kwargs) -> asyncio.Future:
    """Issue a pipelined command now (from a coroutine of the running loop) and return the
    future of its result, to await later: several submitted before the first await go in one
    pipeline, without a task each."""
    return _pipeliner().submit(command, args, kwargs)


async def apipelined(command: str, *args, **kwargs) -> Any:
    """`await client.<command>(*args, **kwargs)` on the running loop's client, pipelined with
    the other commands issued meanwhile (module docstring). Raises what the command raises
    (redis.RedisError, OSError, asyncio.TimeoutError). Cancelling the caller does not take the
    command out of a pipeline already sent."""
    return await asyncio.shield(_pipeliner().submit(command, args, kwargs))
