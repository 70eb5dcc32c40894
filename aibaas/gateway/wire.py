"""The ASGI messages of the /v1 handler: reading a request body within a limit, sending JSON, a
redirect or an SSE stream. No decisions here: aibaas/gateway/asgi.py makes them."""

from collections.abc import AsyncIterator
from typing import Any

from infra import jsonfast
from infra.errors import ApplicationError

Headers = list[tuple[bytes, bytes]]
STREAM_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class BodyTooLarge(Exception):
    pass


class Disconnected(Exception):
    pass


def json_bytes(body: Any) -> bytes:
    return jsonfast.dumps(body)  # a lone surrogate (an upstream's reply): escaped, as it came


def pairs(headers: dict[str, str]) -> Headers:
    """Response headers as ASGI sends them."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def content_length(headers: dict[str, str]) -> int | None:
    """The request's Content-Length, None when absent or not a number."""
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


async def read_body(receive, limit: int) -> bytes:
    """The whole body: BodyTooLarge past `limit` bytes (the rest is not read), Disconnected if
    the client hangs up first."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send, status: int, body: Any, headers: Headers) -> None:
    payload = json_bytes(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_error(send, error: ApplicationError, headers: Headers) -> None:
    await send_json(send, error.status, error.as_dict(), headers + pairs(error.headers))


async def send_redirect(send, location: str, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 301,
            "headers": [
                *headers,
                (b"location", location.encode("latin-1")),
                (b"content-length", b"0"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def send_stream(send, status: int, stream: AsyncIterator[bytes], headers: Headers) -> None:
    """An SSE response, one body message per chunk; the stream is closed however it ends."""
    try:
        await send(
            {"type": "http.response.start", "status": status, "headers": headers + STREAM_HEADERS}
        )
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
