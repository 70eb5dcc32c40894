"""X-Request-ID on every /v1 response (success or error, DRF or async view).

The id is the client's X-Request-ID when it is 1-100 characters of [A-Za-z0-9._-], else a new
uuid4 hex. The usage event of the request needs an id unique per request (it is the event's
idempotency key): a client-chosen id could repeat and would then hide later requests from
billing, so the event's id is the client's id (up to 67 characters) plus ":" and a uuid4 hex
when the client chose one. `request.request_id` / `request.usage_request_id` hold both.

Sync and async capable: under ASGI it adds no thread hop in front of the async /v1 views.
"""

import re
import uuid

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware

HEADER = "X-Request-ID"
PREFIX = "/v1/"
CLIENT_PREFIX_MAX = 67  # 67 + ":" + 32 hex = the event column's 100 characters
_VALID = re.compile(r"[A-Za-z0-9._-]{1,100}\Z")


def request_ids(sent: str | None) -> tuple[str, str]:
    """(the X-Request-ID to answer with, the usage event's id) for the client's header."""
    new = uuid.uuid4().hex
    if sent and _VALID.match(sent):
        return sent, f"{sent[:CLIENT_PREFIX_MAX]}:{new}"
    return new, new


def assign_request_id(request) -> str:
    request.request_id, request.usage_request_id = request_ids(
        request.META.get("HTTP_X_REQUEST_ID")
    )
    return request.request_id


@sync_and_async_middleware
def request_id_middleware(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request):
            if not request.path.startswith(PREFIX):
                return await get_response(request)
            request_id = assign_request_id(request)
            response = await get_response(request)
            response[HEADER] = request_id
            return response

    else:

        def middleware(request):
            if not request.path.startswith(PREFIX):
                return get_response(request)
            request_id = assign_request_id(request)
            response = get_response(request)
            response[HEADER] = request_id
            return response

    return middleware
