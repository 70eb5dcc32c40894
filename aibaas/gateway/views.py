"""The OpenAI-compatible /v1 inference endpoints: async Django views (DRF is sync), thin.

Each turns the HTTP request into a pipeline.Inbound and the pipeline's Reply into a response;
aibaas/gateway/pipeline.py does the work. CSRF-exempt (a machine API authenticated by key, no
cookies); no session is read or written.
"""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.request import RawPostDataException
from django.views.decorators.csrf import csrf_exempt

from aibaas.errors import ApplicationError
from aibaas.gateway import pipeline, streaming
from aibaas.gateway.middleware import assign_request_id
from aibaas.gateway.validation import too_large
from aibaas.http import client_ip
from keys.authentication import key_from_headers

METHOD_NOT_ALLOWED = "method_not_allowed"


def _inbound(request) -> pipeline.Inbound:
    if not hasattr(request, "usage_request_id"):
        assign_request_id(request)  # the middleware is not installed (a bare test setup)
    max_bytes = settings.GATEWAY_MAX_BODY_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = None

    def read_body() -> bytes:
        try:
            return request.body
        except RawPostDataException:
            return b""
        except RequestDataTooBig:  # DATA_UPLOAD_MAX_MEMORY_SIZE, Django's own limit
            raise too_large(max_bytes) from None

    return pipeline.Inbound(
        raw_key=key_from_headers(request),
        request_id=request.usage_request_id,
        client_ip=client_ip(request),
        content_type=request.META.get("CONTENT_TYPE", ""),
        content_length=length,
        read_body=read_body,
        max_body_bytes=max_bytes,
    )


async def _response(request, reply: pipeline.Reply) -> HttpResponse | StreamingHttpResponse:
    if reply.after is not None:
        # A Django view's event loop may end with the view (WSGI): record before answering.
        await reply.after()
    if reply.stream is not None:
        stream = reply.stream
        if not isinstance(request, ASGIRequest):
            # Under WSGI (the test live server) Django would buffer an async stream anyway, in
            # an event loop of its own that no longer owns the provider's generator; buffer it
            # here, in the loop that started it.
            stream = iter([chunk async for chunk in stream])
            await streaming.drain_background()  # its usage event, before this loop ends
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        response = JsonResponse(reply.body, status=reply.status)
    for name, value in reply.headers.items():
        response[name] = value
    return response


def _wrong_method(allowed: str) -> JsonResponse:
    error = ApplicationError(METHOD_NOT_ALLOWED, f"Use {allowed} for this endpoint.", status=405)
    response = JsonResponse(error.as_dict(), status=405)
    response["Allow"] = allowed
    return response


@csrf_exempt
async def models_list(request):
    if request.method != "GET":
        return _wrong_method("GET")
    return await _response(request, await pipeline.models_list(_inbound(request)))


@csrf_exempt
async def models_retrieve(request, model: str):
    if request.method != "GET":
        return _wrong_method("GET")
    return await _response(request, await pipeline.models_retrieve(_inbound(request), model))


@csrf_exempt
async def chat_completions(request):
    if request.method != "POST":
        return _wrong_method("POST")
    return await _response(request, await pipeline.chat(_inbound(request)))


@csrf_exempt
async def embeddings(request):
    if request.method != "POST":
        return _wrong_method("POST")
    return await _response(request, await pipeline.embeddings(_inbound(request)))
