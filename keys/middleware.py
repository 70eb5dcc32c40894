"""Refuses /api and /v1 requests that carry an API key in the URL's query string: 401
`key_in_query`, naming the headers to use. `key_in_query_refusal()` is the one rule: this
middleware applies it to what Django serves, the /v1 ASGI handler (aibaas/gateway/asgi.py) to
the inference routes. First in the chain, so nothing behind it sees the request. Sync and
async capable (no thread hop under ASGI)."""

from asgiref.sync import iscoroutinefunction
from django.http import JsonResponse
from django.utils.decorators import sync_and_async_middleware

from infra.errors import ApplicationError
from keys.authentication import CHALLENGE
from keys.format import key_in_query
from keys.verification import KEY_IN_QUERY, KEY_IN_QUERY_MESSAGE

PREFIXES = ("/api/", "/v1/")


def key_in_query_refusal(query: str) -> ApplicationError | None:
    """The 401 for a URL whose query string (`query`, as sent) carries a key, else None."""
    if not key_in_query(query):
        return None
    return ApplicationError(
        KEY_IN_QUERY, KEY_IN_QUERY_MESSAGE, status=401, headers={"WWW-Authenticate": CHALLENGE}
    )


def _refusal(request) -> JsonResponse | None:
    if not request.path.startswith(PREFIXES):
        return None
    error = key_in_query_refusal(request.META.get("QUERY_STRING", ""))
    if error is None:
        return None
    return JsonResponse(error.as_dict(), status=error.status, headers=error.headers)


@sync_and_async_middleware
def key_in_query_middleware(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request):
            return _refusal(request) or await get_response(request)

    else:

        def middleware(request):
            return _refusal(request) or get_response(request)

    return middleware
