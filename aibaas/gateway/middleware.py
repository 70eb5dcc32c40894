"""X-Request-ID on every /v1 response: `request_ids()` is the one rule, used by the /v1 ASGI
handler (aibaas/gateway/asgi.py) and by this middleware for what Django serves under /v1.

The id is the client's X-Request-ID when it is 1-100 characters of [A-Za-z0-9._-], else a new
one: 32 hex characters, a random prefix per process and a counter (unique like a uuid4, without
its read of the kernel's randomness: docs/gateway-performance.md). The usage event's id must be
unique per request (its idempotency key): when the client chose the id, it is the client's id
(up to 67 characters), ":" and a new id. Sync and async capable: no thread hop under ASGI.
"""

import itertools
import os
import re
import secrets
from collections.abc import Mapping

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware

HEADER = "X-Request-ID"
PREFIX = "/v1/"
CLIENT_PREFIX_MAX = 67  # 67 + ":" + 32 hex = the event column's 100 characters
_VALID = re.compile(r"[A-Za-z0-9._-]{1,100}\Z")


_prefix = secrets.token_hex(8)
_counter = itertools.count()


def _new_prefix() -> None:
    """A forked process (gunicorn --preload) must not repeat its parent's ids."""
    global _prefix, _counter
    _prefix, _counter = secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def request_ids(headers: Mapping[str, str]) -> tuple[str, str]:
    """(the X-Request-ID to answer with, the usage event's id) of a request with these headers
    (`get()` by lower-case name: Django's `request.headers` or the ASGI handler's dict)."""
    sent = headers.get("x-request-id")
    new = new_request_id()
    if sent and _VALID.match(sent):
        return sent, f"{sent[:CLIENT_PREFIX_MAX]}:{new}"
    return new, new


def assign_request_id(request) -> str:
    request.request_id, _ = request_ids(request.headers)
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
