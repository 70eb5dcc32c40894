"""GET /api/usage (and /api/usage/csv): the organization's usage over time from the rollups,
for a dashboard session, a JWT, or a key with the usage:read or admin scope."""

import csv
from datetime import UTC, datetime, timedelta

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.errors import INVALID_REQUEST, ApplicationError
from infra.schema import NO_NUL_PATTERN, errors
from keys.access import OrganizationAccess, resolve_access
from metering.models import UsageRollup
from metering.rollups.buckets import PERCENTILES, STEP, floor
from metering.rollups.selectors import GROUPS, MAX_BUCKETS, usage_series

USAGE_SCOPES = ("usage:read", "admin")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
DEFAULT_SPAN = {UsageRollup.HOUR: timedelta(hours=24), UsageRollup.DAY: timedelta(days=30)}
START_AFTER_END = "'start' must be before 'end'."
TOO_MANY_BUCKETS = (
    f"The range holds more than {MAX_BUCKETS} {{granularity}} buckets: narrow it, or ask for "
    "granularity=day."
)
OUT_OF_RANGE = "Dates must lie between 1970-01-01 and 9999-01-01."


def _list(help_text: str) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.RegexField(NO_NUL_PATTERN, max_length=200),
        required=False,
        max_length=100,
        help_text=help_text,
    )


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateTimeField(
        required=False,
        help_text="ISO 8601 (UTC when no offset). Default: `end` minus 24 hours (hour) or 30 "
        "days (day). The first bucket is the one that holds it.",
    )
    end = serializers.DateTimeField(required=False, help_text="Exclusive. Default: now.")
    granularity = serializers.ChoiceField(
        choices=[UsageRollup.HOUR, UsageRollup.DAY], default=UsageRollup.DAY
    )
    group_by = serializers.ChoiceField(
        choices=GROUPS, required=False, help_text="One series per key (key_id) or per model."
    )
    key = _list("Only these keys (key_id; repeat the parameter for several).")
    model = _list("Only these models (repeat the parameter for several).")

    def validate(self, data: dict) -> dict:
        granularity = data["granularity"]
        end = data.get("end") or timezone.now()
        start = data.get("start") or end - DEFAULT_SPAN[granularity]
        for name, value in (("start", start), ("end", end)):
            if not EARLIEST <= value <= LATEST:
                raise ApplicationError(INVALID_REQUEST, OUT_OF_RANGE, status=400, param=name)
        if start >= end:
            raise ApplicationError(INVALID_REQUEST, START_AFTER_END, status=400, param="start")
        if (end - floor(start, granularity)) / STEP[granularity] > MAX_BUCKETS:
            raise ApplicationError(
                INVALID_REQUEST,
                TOO_MANY_BUCKETS.format(granularity=granularity),
                status=400,
                param="start",
            )
        return {**data, "start": start, "end": end}


def _percentile_fields() -> dict:
    return {
        f"{what}_p{q}_ms": serializers.IntegerField(allow_null=True)
        for what in ("latency", "ttft")
        for q in PERCENTILES
    }


FIGURES = {
    "requests": serializers.IntegerField(help_text="Billable requests."),
    "refused": serializers.IntegerField(help_text="Requests refused before admission."),
    "input_tokens": serializers.IntegerField(),
    "output_tokens": serializers.IntegerField(),
    "total_tokens": serializers.IntegerField(),
    "cached_tokens": serializers.IntegerField(
        help_text="Input tokens of requests served from the response cache."
    ),
    "cost": serializers.CharField(help_text='Decimal string in USD, e.g. "0.00001234".'),
    "errors": serializers.IntegerField(help_text="Billable requests that failed (4xx + 5xx)."),
    "errors_4xx": serializers.IntegerField(),
    "errors_5xx": serializers.IntegerField(),
    "error_rate": serializers.FloatField(help_text="errors / requests (0 without requests)."),
    "latency_mean_ms": serializers.IntegerField(allow_null=True),
    **_percentile_fields(),
}
CSV_COLUMNS = ["bucket", "group", *FIGURES]

UsageSeriesSerializer = inline_serializer(
    "UsageSeries",
    {
        "object": serializers.CharField(),
        "organization": serializers.CharField(),
        "start": serializers.DateTimeField(help_text="Start of the first bucket."),
        "end": serializers.DateTimeField(),
        "granularity": serializers.CharField(),
        "group_by": serializers.CharField(allow_null=True),
        "buckets": serializers.ListField(
            child=serializers.DateTimeField(), help_text="Every bucket start of the range."
        ),
        "groups": inline_serializer(
            "UsageGroup",
            {
                "group": serializers.CharField(help_text="key_id or model."),
                "name": serializers.CharField(
                    allow_null=True, help_text="The key's name (null once deleted) or the model."
                ),
                **FIGURES,
            },
            many=True,
        ),
        "totals": inline_serializer("UsageSeriesTotals", FIGURES),
        "data": inline_serializer(
            "UsagePoint",
            {
                "bucket": serializers.DateTimeField(),
                "group": serializers.CharField(
                    required=False, help_text="key_id or model, when grouped."
                ),
                **FIGURES,
            },
            many=True,
            help_text="The buckets (and groups) with usage, in time order.",
        ),
    },
)


def series_for(request) -> dict:
    access = resolve_access(request)
    query = UsageQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    data = query.validated_data
    return usage_series(
        organization=access.organization,
        start=data["start"],
        end=data["end"],
        granularity=data["granularity"],
        group_by=data.get("group_by"),
        key_ids=data.get("key"),
        models=data.get("model"),
    )


def series_csv_rows(series: dict) -> list[list]:
    """The CSV's rows (header first): one per bucket (and group) with usage, as `data`."""
    rows = [CSV_COLUMNS]
    for point in series["data"]:
        values = {**point, "group": point.get("group", "")}
        rows.append(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    return rows


class UsageSeriesApi(APIView):
    permission_classes = [OrganizationAccess]
    key_scopes = USAGE_SCOPES

    @extend_schema(
        parameters=[UsageQuerySerializer],
        responses={200: UsageSeriesSerializer, **errors(400, 401, 403)},
        operation_id="usage_series",
    )
    def get(self, request):
        return Response(series_for(request))


class UsageCsvApi(APIView):
    permission_classes = [OrganizationAccess]
    key_scopes = USAGE_SCOPES

    def perform_content_negotiation(self, request, force=False):
        # The body is CSV whatever the Accept header says; errors are JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[UsageQuerySerializer],
        responses={
            (200, "text/csv"): OpenApiResponse(
                response=OpenApiTypes.STR,
                description="CSV: " + ",".join(CSV_COLUMNS) + " (one row per bucket and group).",
            ),
            **errors(400, 401, 403),
        },
        operation_id="usage_csv",
    )
    def get(self, request):
        series = series_for(request)
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        name = f"usage-{series['organization']}-{series['start'][:10]}-{series['granularity']}"
        response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
        csv.writer(response).writerows(series_csv_rows(series))
        return response
