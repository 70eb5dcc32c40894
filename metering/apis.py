"""Machine API of metering: GET /v1/usage."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import organization_get
from keys.authentication import ApiKeyAuthentication
from keys.permissions import HasApiKey
from metering.selectors import month_period, usage_summary


def _totals_fields() -> dict:
    return {
        "requests": serializers.IntegerField(),
        "input_tokens": serializers.IntegerField(),
        "output_tokens": serializers.IntegerField(),
        "cost": serializers.CharField(help_text='Decimal string, e.g. "0.00001234".'),
    }


_TOTALS = inline_serializer("UsageTotals", _totals_fields())


class UsageApi(APIView):
    """GET /v1/usage: the calling key's organization's usage this month (or ?month=YYYY-MM),
    the last 24 hours, per key and per model. Needs the usage:read scope."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    required_scope = "usage:read"

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "month", str, description="Calendar month (UTC) as YYYY-MM; default: this one."
            )
        ],
        responses=inline_serializer(
            "Usage",
            {
                "object": serializers.CharField(),
                "organization": serializers.CharField(),
                "period": inline_serializer(
                    "UsagePeriod",
                    {"start": serializers.DateTimeField(), "end": serializers.DateTimeField()},
                ),
                "totals": _TOTALS,
                "last_24h": _TOTALS,
                "by_key": inline_serializer(
                    "UsageByKey",
                    {
                        "key_id": serializers.CharField(),
                        "name": serializers.CharField(allow_null=True),
                        **_totals_fields(),
                    },
                    many=True,
                ),
                "by_model": inline_serializer(
                    "UsageByModel",
                    {"model": serializers.CharField(), **_totals_fields()},
                    many=True,
                ),
            },
        ),
        operation_id="v1_usage",
    )
    def get(self, request):
        start, end = month_period(request.query_params.get("month"))
        organization = organization_get(slug=request.auth.organization_slug)
        return Response(usage_summary(organization=organization, start=start, end=end))
