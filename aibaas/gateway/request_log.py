"""One log line per /v1 inference request, when it ends: method, path, status, latency, the
request id, and who asked for what (organization, key id, model) as far as the request got; and
the request's metrics from the same entry (aibaas/gateway/metrics.py), logged or not.

The ASGI handler wraps each request in `logged` (the status and X-Request-ID are read from the
response it sends); the pipeline notes the caller and the model in the request's entry through
a context variable, so nothing is threaded through its signatures. The key id is the public
part of a key (keys/format.py); the raw key is never noted.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from aibaas.gateway import metrics

logger = logging.getLogger("aibaas.requests")

# The status logged for a request whose client left before any answer (nginx's convention).
CLIENT_CLOSED = 499


class RequestLog:
    """The entry of one request, filled in as it goes."""

    __slots__ = (
        "closed",
        "ended",
        "first_token",
        "key_id",
        "limit",
        "method",
        "model",
        "model_known",
        "organization",
        "path",
        "request_id",
        "started",
        "status",
    )

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.started = time.perf_counter()
        self.status: int | None = None
        self.request_id: str | None = None
        self.organization: str | None = None
        self.key_id: str | None = None
        self.model: str | None = None
        self.model_known = False  # the registry's (a bounded metrics label)
        self.limit: str | None = None  # the limit that refused it (429)
        self.first_token: float | None = None  # seconds to a stream's first chunk
        self.closed = False  # the client hung up mid-response
        self.ended: int | None = None  # a stream's failure after its 200 (502, 504)

    def emit(self) -> None:
        seconds = time.perf_counter() - self.started
        status = self.status if self.status is not None else CLIENT_CLOSED
        metrics.observe_request(self, status, seconds)
        if not logger.isEnabledFor(logging.INFO):
            return
        latency_ms = round(seconds * 1000, 1)
        logger.info(
            "%s %s %s %sms request_id=%s org=%s key=%s model=%s",
            self.method,
            self.path,
            status,
            latency_ms,
            self.request_id,
            self.organization,
            self.key_id,
            self.model,
            extra={
                "request_id": self.request_id,
                "organization": self.organization,
                "key_id": self.key_id,
                "model": self.model,
                "method": self.method,
                "path": self.path,
                "status": status,
                "latency_ms": latency_ms,
            },
        )


_current: ContextVar[RequestLog | None] = ContextVar("aibaas_request_log", default=None)


def note_key(context) -> None:
    """The authenticated caller (a keys.verification.KeyContext): its organization and key id."""
    entry = _current.get()
    if entry is not None:
        entry.organization = context.organization_slug
        entry.key_id = context.key_id


def note_model(name: str, *, known: bool) -> None:
    """The model asked for; `known`: the registry's (else it is "other" in the metrics)."""
    entry = _current.get()
    if entry is not None:
        entry.model = name
        entry.model_known = known


def note_error(error) -> None:
    """The request's error answer (an ApplicationError): the limit of a refusal."""
    entry = _current.get()
    if entry is not None:
        entry.limit = getattr(error, "limit", None)


def note_stream_failed(status: int) -> None:
    """The stream, already answered 200, ended with an upstream error (`status`)."""
    entry = _current.get()
    if entry is not None:
        entry.ended = status


def note_closed() -> None:
    """The client hung up after the response started (mid-stream)."""
    entry = _current.get()
    if entry is not None:
        entry.closed = True


async def logged(scope, send, handle: Callable[..., Awaitable[None]]) -> None:
    """Run `handle(send)` for the request `scope`; log its line and observe its metrics when it
    ends, however."""
    entry = RequestLog(scope["method"], scope["path"])
    token = _current.set(entry)

    async def send_noting(message) -> None:
        if message["type"] == "http.response.start":
            entry.status = message["status"]
            for name, value in message["headers"]:
                if name == b"x-request-id":
                    entry.request_id = value.decode("latin-1")
                elif name == b"content-type" and value.startswith(b"text/event-stream"):
                    # A stream starts once its first chunk is in hand (streaming.open_stream).
                    entry.first_token = time.perf_counter() - entry.started
        await send(message)

    try:
        await handle(send_noting)
    finally:
        _current.reset(token)
        entry.emit()
