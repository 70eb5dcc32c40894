"""Emit side: `ausage_emit`, one event per authenticated /v1 request, to the Redis stream (one
XADD, no SQL on the request path; metering/usage/drain.py moves it into the table) or, without
a broker or while Redis's breaker is open (infra/breaker.py), straight into the database
(usage_record). An event that cannot be stored is logged as replayable JSON and raised.
"""

import logging

import redis
from asgiref.sync import sync_to_async

from infra.breaker import redis_breaker
from infra.db import releasing_connections, when_unlocked
from infra.redis_clients import REDIS_ERRORS, apipelined, aredis_client
from metering.usage import inflight
from metering.usage.events import ENTRY_FIELD, UsageEventData, stream_enabled, stream_key
from metering.usage.record import usage_record

logger = logging.getLogger(__name__)


def _redis_failed(error: Exception, event: "UsageEventData") -> None:
    redis_breaker().failed(error)
    logger.warning("usage event %s written to the database directly (Redis down)", event.request_id)


def _xadd_args(event: UsageEventData) -> tuple[tuple, dict]:
    return (stream_key(), {ENTRY_FIELD: event.to_json()}), {}


def _record(event: UsageEventData) -> None:
    try:
        when_unlocked(lambda: usage_record(events=[event]))
    except Exception:
        logger.exception("usage event NOT RECORDED, replay it: %s", event.to_json())
        raise


async def ausage_emit(event: UsageEventData) -> None:
    """Record one request's usage (module docstring): redis.asyncio for the stream (pipelined
    with the loop's other commands: infra.redis_clients.apipelined), a worker thread for the
    database. The request's marker in the in-flight registry (metering/usage/inflight.py) goes
    with the event: in the same Lua script as the XADD, or once the event is committed."""
    registry = inflight.current()
    hashes = registry.ending(event.request_id) if registry is not None else ()
    if stream_enabled() and redis_breaker().usable():
        args, kwargs = _xadd_args(event)
        try:
            if hashes:
                key, fields = args
                [(name, payload)] = fields.items()
                script = registry.emit_args(key, hashes, name, payload, event.request_id)
                await _aemit_script(script)
            else:
                await apipelined("xadd", *args, **kwargs)
            return
        except REDIS_ERRORS as error:
            _redis_failed(error, event)
    await sync_to_async(releasing_connections(_record))(event)
    if hashes:
        registry.forget(event.request_id)


async def _aemit_script(args: tuple) -> None:
    """The event and its marker's end in one EVALSHA; the script is loaded first if this Redis
    does not know it (a restart): NOSCRIPT means nothing ran."""
    try:
        await apipelined("evalsha", *args)
    except redis.exceptions.NoScriptError:
        await aredis_client().script_load(inflight.EMIT)
        await apipelined("evalsha", *args)
