"""The /v1 inference hot path as a lean ASGI handler, in front of Django.

`GET /v1/models`, `GET /v1/models/{model}`, `POST /v1/chat/completions` and
`POST /v1/embeddings` are answered here and only here (the one entry path: Django has no view
for them), on the event loop, without Django's request/middleware machinery; every other path
(and every other /v1 path: /v1/key, /v1/usage) goes to Django's ASGI application unchanged. The
work itself is aibaas/gateway/pipeline.py. What Django's side does too is one function both
call: the key from the headers (keys/authentication.py), the key_in_query refusal
(keys/middleware.py), request ids (aibaas/gateway/middleware.py), the client address and the
405 (infra/http.py).

Why: measured on the 2-core machine (README, "Performance"), a Django async view pays a thread
hop per request for the sync-only middleware (WhiteNoise, django-ratelimit) and Django's
request setup: ~4 ms at concurrency 1 and under 400 requests/s at concurrency 32, against the
budget of 2 ms and 1,000 requests/s. This handler keeps what the Django path gave these routes:

- Django's own security decisions, asked of Django (aibaas/gateway/security.py): the Host check
  (400 otherwise), the HTTPS redirect and SecurityMiddleware's headers (HSTS, nosniff, ...).
- X-Request-ID on every response (aibaas/gateway/middleware.py's rules).
- The body read up to GATEWAY_MAX_BODY_BYTES (413 beyond, without reading the rest).
- The client address from the same trusted source as the rate limiters (infra/http.py).
- A client that hangs up cancels the request (upstream call or stream included): the pipeline
  then records its usage event with status 499.
- Lifespan: on startup the in-flight registry starts (metering/inflight.py); on shutdown the
  usage events of closing streams are awaited and the upstream connection pools closed.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from aibaas.gateway import pipeline, request_log, streaming, validation
from aibaas.gateway.middleware import request_ids
from aibaas.gateway.security import Security, SecurityRequest
from infra.errors import ApplicationError, internal_error
from infra.http import client_address, method_refusal
from keys import changes
from keys.authentication import key_from_headers
from keys.middleware import key_in_query_refusal

logger = logging.getLogger(__name__)

Handler = Callable[[pipeline.Inbound], Awaitable[pipeline.Reply]]

ROUTES: dict[str, tuple[str, Handler]] = {
    "/v1/models": ("GET", pipeline.models_list),
    "/v1/chat/completions": ("POST", pipeline.chat),
    "/v1/embeddings": ("POST", pipeline.embeddings),
}
BAD_HOST = "invalid_host"


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class _Config:
    """Settings read once per process (they do not change while it runs; tests reset it)."""

    def __init__(self) -> None:
        self.max_body = settings.GATEWAY_MAX_BODY_BYTES
        self.security = Security()


_config: _Config | None = None


def config() -> _Config:
    global _config
    if _config is None:
        _config = _Config()
    return _config


def reset_config(**kwargs) -> None:
    """Forget the settings read (connected to setting_changed: tests that override settings)."""
    global _config
    _config = None


setting_changed.connect(reset_config, dispatch_uid="gateway-asgi-config")


def _json(body: Any) -> bytes:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from an upstream's reply): JSON's escapes carry it as it came.
        return json.dumps(body, separators=(",", ":")).encode()


def _pairs(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Response headers as ASGI sends them."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


MODELS_PREFIX = "/v1/models/"


def _route(path: str) -> tuple[str, Handler] | None:
    route = ROUTES.get(path)
    if route is None and path.startswith(MODELS_PREFIX) and len(path) > len(MODELS_PREFIX):
        # GET /v1/models/{model} (model names may hold a slash: "org/model").
        return "GET", partial(pipeline.models_retrieve, name=path[len(MODELS_PREFIX) :])
    return route


class GatewayApplication:
    """ASGI application: the inference routes here, everything else to `django`."""

    def __init__(self, django) -> None:
        self.django = django

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = _route(scope["path"])
            if route is not None:
                await request_log.logged(
                    scope,
                    send,
                    partial(self.handle, scope, receive, method=route[0], handler=route[1]),
                )
                return
        elif kind == "lifespan":
            await self.lifespan(receive, send)
            return
        await self.django(scope, receive, send)

    # --- lifespan ----------------------------------------------------------------------------

    async def lifespan(self, receive, send) -> None:
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

    # --- one request -------------------------------------------------------------------------

    async def handle(self, scope, receive, send, method: str, handler: Handler) -> None:
        cfg = config()
        # Names arrive lower-cased (ASGI); as text, the shape the shared helpers read.
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        request_id, usage_id = request_ids(headers)
        query = scope.get("query_string", b"").decode("latin-1")
        django = SecurityRequest(scope, headers, query)  # Django's decisions, below
        common = [(b"x-request-id", request_id.encode()), *cfg.security.headers(django)]

        if not django.allowed_host():
            error = ApplicationError(BAD_HOST, "Invalid Host header.", status=400)
            await self._send_error(send, error, common)
            return
        error = key_in_query_refusal(query)  # before any redirect echoes the key back
        if error is not None:
            await self._send_error(send, error, common)
            return
        location = cfg.security.redirect(django)
        if location is not None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 301,
                    "headers": [
                        *common,
                        (b"location", location.encode("latin-1")),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        error = method_refusal(scope["method"], method)
        if error is not None:
            await self._send_error(send, error, common)
            return

        length = None
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length = None
        body = b""
        too_large = False
        if method == "POST" and (length is None or length <= cfg.max_body):
            try:
                body = await self._read_body(receive, cfg.max_body)
            except _BodyTooLarge:
                too_large = True
            except _Disconnected:
                return

        def read_body() -> bytes:
            if too_large:
                raise validation.too_large(cfg.max_body)
            return body

        client = scope.get("client")
        inbound = pipeline.Inbound(
            raw_key=key_from_headers(headers),
            request_id=usage_id,
            client_ip=client_address(client[0] if client else None, headers),
            content_type=headers.get("content-type", ""),
            content_length=length,
            read_body=read_body,
            max_body_bytes=cfg.max_body,
        )
        await self._respond(receive, send, handler, inbound, common)

    async def _respond(self, receive, send, handler: Handler, inbound, common) -> None:
        """Run the pipeline and send its reply in this task, cancelling it if the client hangs
        up (one watcher task per request, no second task for the work and no asyncio.wait:
        measured, a tenth of the handler's own cost in a burst)."""
        task = asyncio.current_task()
        hung_up = False

        async def watch() -> None:
            nonlocal hung_up
            while (await receive())["type"] != "http.disconnect":
                pass
            hung_up = True
            task.cancel()  # the pipeline records a 499

        watcher = asyncio.ensure_future(watch())
        try:
            await self._run(send, handler, inbound, common)
        except asyncio.CancelledError:
            if not hung_up:
                raise  # this handler itself was cancelled (server shutdown)
            task.uncancel()
        except OSError:
            pass  # the client hung up while we were sending; the pipeline recorded it
        finally:
            watcher.cancel()

    async def _run(self, send, handler: Handler, inbound, common) -> None:
        try:
            reply = await handler(inbound)
        except Exception:
            # A bug: the pipeline recorded the request's usage event (status 500); the client
            # still gets JSON in OpenAI's shape, with the id to quote, never a traceback.
            logger.exception("unhandled error in %s", handler)
            error = internal_error(common[0][1].decode())  # the X-Request-ID header
            await self._send_json(send, 500, error.as_dict(), common)
            return
        if reply.after is not None:
            # The usage event goes alongside the sending: the client does not wait for it, and
            # a client hanging up from here on cannot cancel it.
            streaming.background(reply.after())
        extra = _pairs(reply.headers)
        if reply.stream is None:
            await self._send_json(send, reply.status, reply.body, common + extra)
            return
        stream = reply.stream
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [
                        *common,
                        *extra,
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @staticmethod
    async def _read_body(receive, limit: int) -> bytes:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _send_json(send, status: int, body: Any, headers: list) -> None:
        payload = _json(body)
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

    @classmethod
    async def _send_error(cls, send, error: ApplicationError, headers: list) -> None:
        await cls._send_json(send, error.status, error.as_dict(), headers + _pairs(error.headers))


async def startup() -> None:
    """Start the in-flight registry (metering/inflight.py): from now on, if this process dies,
    a survivor records its admitted requests as interrupted; and the key change poller
    (keys/changes.py)."""
    from metering import inflight

    await inflight.start()
    changes.start_polling()  # key revocations made by any process reach this one


async def shutdown() -> None:
    """Await the usage events of replies and streams still closing, send the rate-limit and
    quota settlements still pending (and the quota's leases back), remove the in-flight
    registry, then close the upstream pools and the quota's database connections."""
    await streaming.drain_background()
    from aibaas.gateway.providers.openai_compatible import close_sessions
    from metering import inflight, limiter, quota

    await inflight.stop()
    await limiter.aflush_settlements()
    await quota.aclose()
    await close_sessions()
