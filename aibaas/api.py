"""The DRF glue every API shares: one exception handler for OpenAI-shaped errors."""

import math

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from infra.errors import INVALID_REQUEST, ApplicationError, method_not_allowed
from infra.http import TOO_MANY_ATTEMPTS
from keys.authentication import KeyAuthenticationFailed
from keys.verification import INVALID_API_KEY, MISSING_KEY_MESSAGE

_AUTH_FAILURES = (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)

_CODES = {
    400: INVALID_REQUEST,
    401: "invalid_authentication",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
}


def _first_error(detail, path: str = "") -> tuple[str | None, str]:
    """(param, message) of the first error in a DRF error tree."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            param = f"{path}.{name}" if path and name else (name or path)
            return _first_error(value, param)
    if isinstance(detail, list) and detail:
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                return _first_error(value, f"{path}[{index}]" if path else str(index))
        return path or None, str(detail[0])
    return path or None, str(detail)


def error_response(error: ApplicationError, headers: dict | None = None) -> Response:
    return Response(
        error.as_dict(), status=error.status, headers={**error.headers, **(headers or {})}
    )


def exception_handler(exc, context):
    """Every API error as {"error": {"type", "code", "message", "param"}}."""
    request = context.get("request")
    headers: dict[str, str] = {}
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    if isinstance(exc, RequestDataTooBig):  # Django's cap on a body read whole (JSON, forms)
        exc = ApplicationError(
            _CODES[413],
            "The request body is larger than the limit of "
            f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
            status=413,
            error_type=INVALID_REQUEST,
        )
    if isinstance(exc, Ratelimited):
        exc = exceptions.Throttled(wait=60, detail=TOO_MANY_ATTEMPTS)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, ApplicationError):
        error = exc
    elif isinstance(exc, KeyAuthenticationFailed):
        error = ApplicationError(exc.error_code, str(exc.detail), status=exc.error_status)
    elif isinstance(exc, exceptions.NotAuthenticated) and _is_v1(request):
        error = ApplicationError(INVALID_API_KEY, MISSING_KEY_MESSAGE, status=401)
    elif isinstance(exc, exceptions.MethodNotAllowed):
        error = method_not_allowed(_allowed(context.get("view")))
    elif isinstance(exc, exceptions.ValidationError):
        param, message = _first_error(exc.detail)
        error = ApplicationError(INVALID_REQUEST, message, status=400, param=param)
    elif isinstance(exc, exceptions.APIException):
        # A missing or bad credential is a 401 with a challenge. DRF answers 403 instead when
        # the view's first authenticator (the session, on /api) has no WWW-Authenticate, which
        # would tell a client holding an expired JWT not to refresh it.
        status = 401 if isinstance(exc, _AUTH_FAILURES) else exc.status_code
        # The contract's codes for 400 and 429; DRF's own ("not_found", ...) for the rest.
        code = _CODES.get(status) if status in (400, 429) else None
        if code is None and isinstance(exc.get_codes(), str):
            code = exc.get_codes()
        message = exc.detail if isinstance(exc.detail, str) else _first_error(exc.detail)[1]
        error = ApplicationError(code or _CODES.get(status, "error"), str(message), status=status)
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            retry = max(1, math.ceil(exc.wait))  # whole seconds, as every 429 of DESIGN.md
            headers["Retry-After"] = str(retry)
            error.extra["retry_after"] = retry
    else:
        return None

    if error.status == 401 and request is not None:
        challenge = _challenge(request, context)
        if challenge:
            headers["WWW-Authenticate"] = challenge
    set_rollback()
    return error_response(error, headers)


def _allowed(view) -> str:
    """The methods a DRF view answers, as the 405's message names them (HEAD and OPTIONS go
    without saying)."""
    methods = view.allowed_methods if view is not None else []
    return ", ".join(m for m in methods if m not in ("HEAD", "OPTIONS"))


def _is_v1(request) -> bool:
    return request is not None and request.path.startswith("/v1")


def _challenge(request, context) -> str | None:
    """The WWW-Authenticate value of the first authenticator of the view that has one."""
    view = context.get("view")
    authenticators = [getattr(request, "_authenticator", None)]
    authenticators += view.get_authenticators() if view is not None else []
    for authenticator in authenticators:
        header = authenticator.authenticate_header(request) if authenticator else None
        if header:
            return header
    return None
