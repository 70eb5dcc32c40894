"""The /v1 inference routes as a lean ASGI handler in front of Django: the one entry path for
`GET /v1/models[/{model}]`, `POST /v1/chat/completions` and `POST /v1/embeddings`; every other
path goes to Django's ASGI application unchanged. The work is aibaas/gateway/pipeline.py.

Invariants: Django's own security decisions apply (aibaas/gateway/security.py: Host check,
HTTPS redirect, SecurityMiddleware's headers); every answer carries X-Request-ID; a key in the
query string is refused before any redirect could echo it; the body is read up to
GATEWAY_MAX_BODY_BYTES (413 beyond); a client that hangs up cancels the request, which then
records its usage event as 499. Why a handler and not Django views, with figures:
docs/gateway-performance.md.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from django.conf import settings

from aibaas.gateway import models_endpoints, pipeline, request_log, streaming, validation, wire
from aibaas.gateway.lifespan import lifespan
from aibaas.gateway.middleware import request_ids
from aibaas.gateway.security import Security, SecurityRequest
from infra import tracing
from infra.errors import ApplicationError, internal_error
from infra.http import client_address, method_refusal
from infra.memo import per_settings
from keys.authentication import key_from_headers
from keys.middleware import key_in_query_refusal

logger = logging.getLogger(__name__)

Handler = Callable[[pipeline.Inbound], Awaitable[pipeline.Reply]]

ROUTES: dict[str, tuple[str, Handler]] = {
    "/v1/models": ("GET", models_endpoints.models_list),
    "/v1/chat/completions": ("POST", pipeline.chat),
    "/v1/embeddings": ("POST", pipeline.embeddings),
}
MODELS_PREFIX = "/v1/models/"
BAD_HOST = "invalid_host"


class _Config:
    """Settings read once per process (they do not change while it runs; tests reset it)."""

    def __init__(self) -> None:
        self.max_body = settings.GATEWAY_MAX_BODY_BYTES
        self.security = Security()


@per_settings
def config() -> _Config:
    """The settings read, once per process (again after a test overrides one)."""
    return _Config()


def _route(path: str) -> tuple[str, Handler] | None:
    route = ROUTES.get(path)
    if route is None and path.startswith(MODELS_PREFIX) and len(path) > len(MODELS_PREFIX):
        # GET /v1/models/{model} (model names may hold a slash: "org/model").
        return "GET", partial(models_endpoints.models_retrieve, name=path[len(MODELS_PREFIX) :])
    return route


def _route_name(path: str) -> str:
    return path if path in ROUTES else MODELS_PREFIX + "{model}"


class GatewayApplication:
    """ASGI application: the inference routes here, everything else to `django`."""

    def __init__(self, django) -> None:
        self.django = django

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = _route(scope["path"])
            if route is not None:
                handle = partial(self.handle, scope, receive, method=route[0], handler=route[1])
                if tracing.on():  # infra/tracing.py: one server span per request, logged in it
                    run = partial(request_log.logged, scope, handle=handle)
                    await tracing.serve(scope, send, run, route=_route_name(scope["path"]))
                else:
                    await request_log.logged(scope, send, handle)
                return
        elif kind == "lifespan":
            await lifespan(receive, send)
            return
        await self.django(scope, receive, send)

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
        if await _refused(send, cfg, django, scope["method"], method, common):
            return
        length = wire.content_length(headers)
        body, too_large = b"", False
        if method == "POST" and (length is None or length <= cfg.max_body):
            try:
                body = await wire.read_body(receive, cfg.max_body)
            except wire.BodyTooLarge:
                too_large = True
            except wire.Disconnected:
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
            content_encoding=headers.get("content-encoding", ""),
            content_length=length,
            read_body=read_body,
            max_body_bytes=cfg.max_body,
        )
        await _respond(receive, send, handler, inbound, common)


async def _refused(
    send, cfg: _Config, django: SecurityRequest, method: str, allowed: str, common: wire.Headers
) -> bool:
    """Answer what is refused before the body is read, in this order: a Host not in
    ALLOWED_HOSTS, a key in the query string (before any redirect echoes it back), the HTTPS
    redirect, a method not allowed. True when an answer was sent."""
    if not cfg.security.allowed_host(django):
        error = ApplicationError(BAD_HOST, "Invalid Host header.", status=400)
        await wire.send_error(send, error, common)
        return True
    error = key_in_query_refusal(django.META["QUERY_STRING"])
    if error is None:
        location = cfg.security.redirect(django)
        if location is not None:
            await wire.send_redirect(send, location, common)
            return True
        error = method_refusal(method, allowed)
    if error is not None:
        await wire.send_error(send, error, common)
        return True
    return False


async def _respond(receive, send, handler: Handler, inbound, common: wire.Headers) -> None:
    """Run the pipeline and send its reply in this task, cancelling it if the client hangs up
    (one watcher task per request, no second task for the work and no asyncio.wait:
    docs/gateway-performance.md)."""
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
        await _run(send, handler, inbound, common)
    except asyncio.CancelledError:
        if not hung_up:
            raise  # this handler itself was cancelled (server shutdown)
        task.uncancel()
        request_log.note_closed()
    except OSError:
        pass  # the client hung up while we were sending; the pipeline recorded it
    finally:
        watcher.cancel()


async def _run(send, handler: Handler, inbound, common: wire.Headers) -> None:
    try:
        reply = await handler(inbound)
    except Exception:
        # A bug: the pipeline recorded the request's usage event (status 500); the client still
        # gets JSON in OpenAI's shape, with the id to quote, never a traceback.
        logger.exception("unhandled error in %s", handler)
        error = internal_error(common[0][1].decode())  # the X-Request-ID header
        await wire.send_json(send, 500, error.as_dict(), common)
        return
    if reply.after is not None:
        # The usage event goes alongside the sending: the client does not wait for it, and a
        # client hanging up from here on cannot cancel it.
        streaming.background(reply.after())
    headers = common + wire.pairs(reply.headers)
    if reply.stream is None:
        await wire.send_json(send, reply.status, reply.body, headers)
    else:
        await wire.send_stream(send, reply.status, reply.stream, headers)
