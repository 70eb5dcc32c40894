"""Refuses /api and /v1 requests that carry an API key in the URL's query string: 401
`key_in_query`, naming the headers to use (the /v1 inference routes get the same answer from
aibaas/gateway/asgi.py, which serves them without Django). First in the chain, so nothing
behind it sees the request. Sync and async capable (no thread hop under ASGI)."""

from asgiref.sync import iscoroutinefunction
from django.http import JsonResponse
from django.utils.decorators import sync_and_async_middleware

from aibaas.errors import ApplicationError
from keys.format import key_in_query
from keys.verification import KEY_IN_QUERY, KEY_IN_QUERY_MESSAGE

PREFIXES = ("/api/", "/v1/")


def key_in_query_error() -> ApplicationError:
    return ApplicationError(KEY_IN_QUERY, KEY_IN_QUERY_MESSAGE, status=401)


def _refusal(request) -> JsonResponse | None:
    if request.path.startswith(PREFIXES) and key_in_query(request.META.get("QUERY_STRING", "")):
        error = key_in_query_error()
        response = JsonResponse(error.as_dict(), status=error.status)
        response["WWW-Authenticate"] = 'Bearer realm="aibaas"'
        return response
    return None


@sync_and_async_middleware
def key_in_query_middleware(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request):
            return _refusal(request) or await get_response(request)

    else:

        def middleware(request):
            return _refusal(request) or get_response(request)

    return middleware
