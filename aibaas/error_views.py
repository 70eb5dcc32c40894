"""Django's 404 and 500 pages, in OpenAI's JSON error shape for the machine APIs.

An SDK calling an unknown /v1 path (`POST /v1/completions`, a typo) or hitting a bug under /api
gets JSON it can parse, as OpenAI answers; browsers keep Django's HTML pages everywhere else.
"""

from django.http import JsonResponse
from django.views import defaults

from infra.errors import INVALID_REQUEST, ApplicationError, internal_error

UNKNOWN_URL = "unknown_url"
MACHINE_PREFIXES = ("/v1/", "/api/")


def _machine(request) -> bool:
    return request.path.startswith(MACHINE_PREFIXES)


def not_found(request, exception=None):
    if not _machine(request):
        return defaults.page_not_found(request, exception)
    error = ApplicationError(
        UNKNOWN_URL,
        f"Unknown request URL: {request.method} {request.path}. The API reference is at "
        "/api/docs/ (management API) and in the README (/v1).",
        status=404,
        error_type=INVALID_REQUEST,
    )
    return JsonResponse(error.as_dict(), status=404)


def server_error(request):
    if not _machine(request):
        return defaults.server_error(request)
    error = internal_error(getattr(request, "request_id", "-"))
    return JsonResponse(error.as_dict(), status=500)
