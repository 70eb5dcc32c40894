"""The one project error type. Services raise it; the API layer renders it as OpenAI-shaped JSON
and dashboard views show its message as a form error."""


class ApplicationError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        error_type: str | None = None,
        extra: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.param = param
        self.error_type = error_type or _default_type(status)
        self.extra = extra or {}
        self.headers = headers or {}  # response headers, e.g. Retry-After on a 429

    def as_dict(self) -> dict:
        body = {
            "type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }
        body.update(self.extra)
        return {"error": body}


INTERNAL_ERROR = "internal_error"
# The code (and type) of a 400 that has no more specific code.
INVALID_REQUEST = "invalid_request_error"


def internal_error(request_id: str) -> ApplicationError:
    """What a client gets for a bug (never a traceback): the request id to quote."""
    return ApplicationError(
        INTERNAL_ERROR,
        "The server had an error while processing your request. Contact the operator with "
        f"the request id {request_id} if it persists.",
        status=500,
    )


METHOD_NOT_ALLOWED = "method_not_allowed"


def method_not_allowed(allowed: str) -> ApplicationError:
    """The 405 of every API (the /v1 handler's and DRF's); `allowed` as the Allow header says."""
    return ApplicationError(
        METHOD_NOT_ALLOWED,
        f"Use {allowed} for this endpoint.",
        status=405,
        headers={"Allow": allowed},
    )


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "api_error"
    return INVALID_REQUEST
