"""The /v1 DRF views that are not inference: GET /v1/key and GET /v1/usage, with the
rate-limit headers of the calling key. Wiring: they combine keys (authentication) and metering
(limits, usage)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import organization_get
from billing.selectors import billing_notice
from infra.schema import errors
from keys.authentication import ApiKeyAuthentication
from keys.context import KeyContext
from keys.permissions import HasApiKey
from metering.selectors import (
    MONTH_PATTERN,
    key_limit_status,
    key_rate_limit_headers,
    key_windows,
    month_period,
    usage_summary,
)


class RateLimitHeadersMixin:
    """Adds DESIGN.md's rate-limit headers of the calling key (read without counting) to every
    response of a /v1 view authenticated by an API key, as the inference endpoints send them.
    A view that read the windows already leaves them in `request.limit_windows`."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        context = getattr(request, "auth", None)
        if isinstance(context, KeyContext):
            windows = getattr(request, "limit_windows", None)
            for name, value in key_rate_limit_headers(context, windows).items():
                response[name] = value
        return response


def _totals_fields(*, refusals: bool = True) -> dict:
    fields = {
        "requests": serializers.IntegerField(
            help_text="Billable requests: admitted by the limits and the quota, as the quota "
            "counts them. Refused requests are not in it."
        ),
        "input_tokens": serializers.IntegerField(),
        "output_tokens": serializers.IntegerField(),
        "cost": serializers.CharField(help_text='Decimal string, e.g. "0.00001234".'),
        "errors": serializers.IntegerField(
            help_text="Billable requests that failed after admission (upstream error or "
            "timeout, client hung up, interrupted)."
        ),
    }
    if refusals:
        fields["refused"] = serializers.IntegerField(
            help_text="Requests refused before admission (rate limits, quota, unknown model, "
            "invalid body): not billable, not in `requests`."
        )
    return fields


# The schema of `totals` and `last_24h`: a class, one instance each (one instance declared
# twice is bound once, under its last name: "totals" was missing from the schema).
UsageTotalsSerializer = type("UsageTotalsSerializer", (serializers.Serializer,), _totals_fields())


class UsageOutputSerializer(serializers.Serializer):
    """The body of GET /v1/usage (metering.selectors.usage_summary): its OpenAPI schema."""

    object = serializers.CharField()
    organization = serializers.CharField()
    period = inline_serializer(
        "UsagePeriod", {"start": serializers.DateTimeField(), "end": serializers.DateTimeField()}
    )
    totals = UsageTotalsSerializer()
    last_24h = UsageTotalsSerializer()
    by_key = inline_serializer(
        "UsageByKey",
        {
            "key_id": serializers.CharField(),
            "name": serializers.CharField(allow_null=True),
            **_totals_fields(),
        },
        many=True,
    )
    by_model = inline_serializer(
        "UsageByModel",
        {"model": serializers.CharField(), **_totals_fields(refusals=False)},
        many=True,
        help_text="Billable requests only: a refused request is never a model row.",
    )
    refused_by_code = serializers.DictField(
        child=serializers.IntegerField(),
        help_text='Refused requests by error code, e.g. {"rate_limit_exceeded": 3, '
        '"insufficient_quota": 250}.',
    )


class UsageApi(RateLimitHeadersMixin, APIView):
    """GET /v1/usage: the calling key's organization's usage this month (or ?month=YYYY-MM),
    the last 24 hours, per key and per model. Needs the usage:read scope."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    required_scope = "usage:read"

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "month",
                OpenApiTypes.STR,
                description="Calendar month (UTC) as YYYY-MM, from 1970-01; default: this one.",
                pattern=MONTH_PATTERN,
            )
        ],
        responses={200: UsageOutputSerializer, **errors(400, 401, 403, 503)},
        operation_id="v1_usage",
    )
    def get(self, request):
        start, end = month_period(request.query_params.get("month"))
        organization = organization_get(slug=request.auth.organization_slug)
        return Response(usage_summary(organization=organization, start=start, end=end))


class KeyInfoApi(RateLimitHeadersMixin, APIView):
    """GET /v1/key: the calling key, its scopes, models and limits as the limiter enforces them
    (with a burst: the raised per-minute limits and the burst windows), what remains of each
    limit now (`remaining`, None = unlimited) and when it frees up (`reset_seconds`)."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]

    @extend_schema(
        responses={
            200: inline_serializer(
                "KeyInfo",
                {
                    "object": serializers.CharField(),
                    "id": serializers.CharField(),
                    "name": serializers.CharField(),
                    "organization": serializers.CharField(),
                    "plan": serializers.CharField(),
                    "scopes": serializers.ListField(child=serializers.CharField()),
                    "models": serializers.ListField(child=serializers.CharField(), allow_null=True),
                    "expires_at": serializers.DateTimeField(allow_null=True),
                    "test_mode": serializers.BooleanField(),
                    "limits": serializers.DictField(
                        child=serializers.IntegerField(allow_null=True)
                    ),
                    "remaining": serializers.DictField(
                        child=serializers.IntegerField(allow_null=True)
                    ),
                    "reset_seconds": serializers.DictField(
                        child=serializers.IntegerField(allow_null=True)
                    ),
                    "billing": serializers.DictField(
                        allow_null=True,
                        help_text="Null, or a failed payment: status past_due, the plan kept, "
                        "grace_until (then the free plan) and a message.",
                    ),
                },
            ),
            **errors(401, 503),
        },
        operation_id="v1_key",
    )
    def get(self, request):
        context = request.auth
        request.limit_windows = key_windows(context)  # read once, for the body and the headers
        expires = context.expires_at_datetime
        return Response(
            {
                "object": "api_key",
                "id": context.key_id,
                "name": context.name,
                "organization": context.organization_slug,
                "plan": context.plan_slug,
                "scopes": sorted(context.scopes),
                "models": list(context.models) if context.models is not None else None,
                "expires_at": expires.isoformat().replace("+00:00", "Z") if expires else None,
                "test_mode": context.test_mode,
                **key_limit_status(context, request.limit_windows),  # limits, remaining, ...
                "billing": billing_notice(organization_id=context.organization_id),
            }
        )
