"""OpenAPI pieces shared by /api and /v1: the OpenAI-shaped error of DESIGN.md, `errors()` to
attach it to the statuses an operation really answers, and a postprocessing hook that adds the
headers every 429 carries.

The schema must describe what is served: tests/e2e/test_schemathesis.py fuzzes a live server
against it (status codes, content types, response bodies).
"""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    400: "Invalid request (`invalid_request_error`); `param` names the field.",
    401: "Missing, invalid, revoked or expired credentials (`WWW-Authenticate` says how).",
    403: "The caller may not do this (`insufficient_scope`, `model_not_allowed`, role).",
    404: "No such object in the caller's organization.",
    405: "Method not allowed (`Allow` lists the methods).",
    409: "The object's state forbids this now (`code` says why).",
    413: "The request body is larger than GATEWAY_MAX_BODY_BYTES.",
    415: "The request body must be JSON (`Content-Type: application/json`).",
    429: "A rate limit or the monthly quota (`retry_after`, `Retry-After`: whole seconds).",
    502: "The model server failed (`upstream_error`).",
    503: "A dependency is unavailable for a moment; retry after `retry_after` when given.",
    504: "The model server did not answer in time (`upstream_timeout`).",
}


# A text parameter without NUL characters (DRF's CharField refuses them, with a 400).
NO_NUL_PATTERN = r"^[^\u0000]*$"


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="e.g. invalid_request_error, authentication_error.")
    code = serializers.CharField(help_text="Machine-readable, e.g. invalid_api_key.")
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True, help_text="The offending field, or null.")


class ErrorSerializer(serializers.Serializer):
    """Every error of /api and /v1, as OpenAI shapes them."""

    error = ErrorDetailSerializer()


class RetryableErrorDetailSerializer(ErrorDetailSerializer):
    retry_after = serializers.IntegerField(
        min_value=1, help_text="Whole seconds until a retry can succeed (as Retry-After)."
    )


class RetryableErrorSerializer(serializers.Serializer):
    """A 429: the error with `retry_after`, never more than the refusing limit's window."""

    error = RetryableErrorDetailSerializer()


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """The responses of `@extend_schema(responses={200: ..., **errors(400, 401)})`."""
    return {
        status: OpenApiResponse(
            response=RetryableErrorSerializer if status == 429 else ErrorSerializer,
            description=ERROR_DESCRIPTIONS[status],
        )
        for status in statuses
    }


RETRY_AFTER_HEADER = {
    "description": "Whole seconds until a retry can succeed (never more than the window).",
    "schema": {"type": "integer", "minimum": 1},
}


def add_retry_after_headers(result, generator, request, public):
    """drf-spectacular postprocessing hook: every documented 429 carries Retry-After."""
    for item in result.get("paths", {}).values():
        for operation in item.values():
            response = (
                operation.get("responses", {}).get("429") if isinstance(operation, dict) else None
            )
            if response is not None:
                response.setdefault("headers", {})["Retry-After"] = RETRY_AFTER_HEADER
    return result
