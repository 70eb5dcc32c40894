"""Relaying a chat stream to the client, with exactly one usage event however it ends.

The first chunk is awaited before the response starts, so a provider error before it is an
ordinary JSON error (502/504), and so is a provider stream that ends without a single chunk
(never an empty 200 stream). After it, a provider error becomes one final
`data: {"error": {...}}` event. The usage event is recorded when the stream ends: its last
chunk, an upstream error, or the client hanging up (the generator is closed or its task
cancelled; the event is then written by a task of its own that the cancellation cannot reach,
referenced until done by infra/background.py, whose drain the shutdown awaits).
"""

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aibaas.gateway import request_log
from aibaas.gateway.providers.base import (
    UPSTREAM_ERROR,
    ModelSpec,
    Provider,
    ProviderError,
    StreamUsage,
    Usage,
)
from infra.background import background
from infra.background import drain as drain_background  # noqa: F401 (the gateway's name)

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's "client closed request": the client hung up mid-stream
EMPTY_STREAM = "The model server sent an empty stream."

# record(status, usage, upstream_latency_ms) -> awaitable: the request's usage event
Record = Callable[..., Awaitable[None]]


def error_event(error: ProviderError) -> bytes:
    return b"data: " + json.dumps(error.as_dict()).encode() + b"\n\n"


async def open_stream(
    provider: Provider, spec: ModelSpec, body: dict, record: Record
) -> AsyncIterator[bytes]:
    """The client's SSE stream, started: raises ProviderError if no chunk came."""
    usage = StreamUsage()
    chunks = provider.chat_stream(spec, body, usage).__aiter__()
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        raise ProviderError(UPSTREAM_ERROR, EMPTY_STREAM, 502) from None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return RelayStream(chunks, first, usage, record)


class RelayStream:
    """The client's stream (an async iterator of SSE bytes) that records its usage event
    however it ends: iterated to its end, closed midway, or closed before the server asked for
    its first chunk (the client hung up while the response was starting), which an async
    generator alone would not notice (its `finally` never ran)."""

    __slots__ = ("_chunks", "_record", "_relay", "_started", "_usage")

    def __init__(self, chunks, first: bytes, usage: StreamUsage, record: Record) -> None:
        self._chunks, self._usage, self._record = chunks, usage, record
        self._relay = _relay(chunks, first, usage, record)
        self._started = False

    @property
    def usage(self) -> StreamUsage:
        """Filled as the stream runs (the in-flight registry's checkpoints read it)."""
        return self._usage

    def __aiter__(self) -> "RelayStream":
        return self

    def __anext__(self):
        self._started = True
        return self._relay.__anext__()

    async def aclose(self) -> None:
        if not self._started:
            self._started = True
            background(_close_and_record(self._chunks, self._usage, CLIENT_CLOSED, self._record))
            return
        await self._relay.aclose()


async def _relay(
    chunks: AsyncIterator[bytes], first: bytes, usage: StreamUsage, record: Record
) -> AsyncIterator[bytes]:
    status = CLIENT_CLOSED  # unless the stream reaches its end
    try:
        if first:
            yield first
        try:
            async for chunk in chunks:
                yield chunk
            status = 200
        except ProviderError as error:
            status = error.status
            request_log.note_stream_failed(status)
            yield error_event(error)
    finally:
        # Closing the provider's stream (the upstream connection) and recording the usage run
        # in a task of their own, which a cancellation of this one cannot reach: the client
        # may hang up mid-stream, or right after [DONE] (the OpenAI SDKs do) while the event
        # is being written. The response ends without waiting for it, as a non-stream reply
        # does (measured: 500 streams ending together each waited for its usage event's
        # round trip before their last bytes).
        background(_close_and_record(chunks, usage, status, record))


async def _close_and_record(
    chunks: AsyncIterator[bytes], usage: StreamUsage, status: int, record: Record
) -> None:
    try:
        await chunks.aclose()  # type: ignore[attr-defined]
    except Exception:
        logger.warning("closing the provider stream failed", exc_info=True)
    if status == CLIENT_CLOSED and usage.finished:
        status = 200  # every chunk was produced; the client left before the last bytes
    reported: Usage = usage.usage
    await record(status, reported, upstream_latency_ms=usage.upstream_latency_ms)
