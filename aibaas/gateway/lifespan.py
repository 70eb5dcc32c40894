"""The /v1 handler's process lifespan: what a serving process starts before its first request
and finishes before it exits (ASGI lifespan messages, sent by uvicorn)."""

import logging

from aibaas.gateway import streaming
from keys import changes

logger = logging.getLogger(__name__)


async def lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            except Exception:
                logger.exception("gateway shutdown")
            changes.stop_polling()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def startup() -> None:
    """Start the in-flight registry (metering/usage/inflight.py): from now on, if this process
    dies, a survivor records its admitted requests as interrupted; and the key change poller
    (keys/changes.py)."""
    from metering import usage

    await usage.start()
    changes.start_polling()  # key revocations made by any process reach this one


async def shutdown() -> None:
    """Await the usage events of replies and streams still closing, send the rate-limit and
    quota settlements still pending (and the quota's leases back), remove the in-flight
    registry, then close the upstream pools and the quota's database connections."""
    await streaming.drain_background()
    from aibaas.gateway.providers.openai_compatible import close_sessions
    from metering import admission, usage

    await usage.stop()
    await admission.ashutdown()
    await close_sessions()
