"""One log line per /v1 inference request, when it ends: method, path, status, latency, the
request id, and who asked for what (organization, key id, model) as far as the request got.

The ASGI handler wraps each request in `logged` (the status and X-Request-ID are read from the
response it sends); the pipeline notes the caller and the model in the request's entry through
a context variable, so nothing is threaded through its signatures. The key id is the public
part of a key (keys/format.py); the raw key is never noted.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

logger = logging.getLogger("aibaas.requests")

# The status logged for a request whose client left before any answer (nginx's convention).
CLIENT_CLOSED = 499


class RequestLog:
    """The entry of one request, filled in as it goes."""

    __slots__ = (
        "key_id",
        "method",
        "model",
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

    def emit(self) -> None:
        latency_ms = round((time.perf_counter() - self.started) * 1000, 1)
        status = self.status if self.status is not None else CLIENT_CLOSED
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


def note_model(name: str) -> None:
    entry = _current.get()
    if entry is not None:
        entry.model = name


async def logged(scope, send, handle: Callable[..., Awaitable[None]]) -> None:
    """Run `handle(send)` for the request `scope` and log its line when it ends, however."""
    if not logger.isEnabledFor(logging.INFO):
        await handle(send)
        return
    entry = RequestLog(scope["method"], scope["path"])
    token = _current.set(entry)

    async def send_noting(message) -> None:
        if message["type"] == "http.response.start":
            entry.status = message["status"]
            for name, value in message["headers"]:
                if name == b"x-request-id":
                    entry.request_id = value.decode("latin-1")
                    break
        await send(message)

    try:
        await handle(send_noting)
    finally:
        _current.reset(token)
        entry.emit()
