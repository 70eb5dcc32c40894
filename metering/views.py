"""Dashboard pages of metering (the overview is metering/overview_views.py): /dashboard/usage/
and a key's page: charts and tables of the organization's usage, from the rollups
(metering.rollups.selectors.usage_series); the tables carry every number the charts draw, so
the page reads the same with JavaScript off."""

from datetime import datetime
from decimal import Decimal
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from accounts.tenancy import organization_required
from infra.errors import ApplicationError
from keys.selectors import api_key_effective_scopes, api_key_get, api_key_list
from metering.models import UsageRollup
from metering.rollups import ranges
from metering.rollups.selectors import rollup_models, usage_series

GROUPS = {"model": "model", "key": "key"}
# (series field, chart title, unit)
STACKED = (
    ("requests", "Requests", "requests"),
    ("total_tokens", "Tokens", "tokens"),
    ("cost", "Cost", "USD"),
)


def _label(bucket: str, granularity: str) -> str:
    moment = datetime.fromisoformat(bucket.replace("Z", "+00:00"))
    return f"{moment:%Y-%m-%d %H:00}" if granularity == UsageRollup.HOUR else f"{moment:%Y-%m-%d}"


def _number(value) -> Decimal | int:
    return Decimal(value) if isinstance(value, str) else value


def _pivot(series: dict, field: str, groups: list[str]) -> list[dict]:
    """One row per bucket: the value of each group, and the bucket's total."""
    cells: dict[tuple[str, str], int | Decimal] = {}
    for point in series["data"]:
        cells[(point["bucket"], point.get("group"))] = _number(point[field])
    zero = Decimal("0E-8") if field == "cost" else 0
    rows = []
    for bucket in series["buckets"]:
        values = [cells.get((bucket, group), zero) for group in groups]
        rows.append({"bucket": bucket, "values": values, "total": sum(values, zero)})
    return rows


def _summary(title: str, unit: str, rows: list[dict], names: list[str], label) -> str:
    """The chart in one sentence, for screen readers and for everyone."""
    total = sum((row["total"] for row in rows), Decimal(0) if unit == "USD" else 0)
    if not total:
        return f"{title}: none in this range."
    peak = max(rows, key=lambda row: row["total"])
    shares = []
    for index, name in enumerate(names):
        value = sum((row["values"][index] for row in rows), Decimal(0) if unit == "USD" else 0)
        if value:
            shares.append(f"{name} {_plain(value)}")
    return (
        f"{title}: {_plain(total)} {unit} in total; highest {label(peak['bucket'])} with "
        f"{_plain(peak['total'])}. By group: {', '.join(shares)}."
    )


def _plain(value: Decimal | int) -> str:
    """A number as people write it: a cost of 2E-8 reads 0.00000002."""
    return f"{value:f}" if isinstance(value, Decimal) else str(value)


def _usage_context(
    organization, chosen: ranges.Range, group_by: str, key_ids=None, models=None
) -> dict:
    """The charts, their tables and summaries, and the data the charts draw (usage.js)."""
    query = {
        "organization": organization,
        "start": chosen.start,
        "end": chosen.end,
        "granularity": chosen.granularity,
        "key_ids": key_ids,
        "models": models,
    }
    grouped = usage_series(group_by=group_by, **query)
    overall = usage_series(**query)
    groups = [row["group"] for row in grouped["groups"]]
    names = [
        (f"{row['name']} ({row['group']})" if row["name"] else row["group"])
        if group_by == "key"
        else row["group"]
        for row in grouped["groups"]
    ]

    def label(bucket: str) -> str:
        return _label(bucket, chosen.granularity)

    charts = []
    for field, title, unit in STACKED:
        rows = _pivot(grouped, field, groups)
        charts.append(
            {
                "id": field,
                "title": f"{title} by {group_by}",
                "unit": unit,
                "rows": [{**row, "label": label(row["bucket"])} for row in rows],
                "summary": _summary(title, unit, rows, names, label),
            }
        )
    latency_rows = _latency_rows(overall, label)
    api_query = _api_query(grouped, chosen, group_by, key_ids, models)
    return {
        "range": chosen,
        "group_by": group_by,
        "names": names,
        "charts": charts,
        "latency_rows": latency_rows,
        "latency_summary": _latency_summary(overall["totals"]),
        "totals": overall["totals"],
        "csv_url": f"{reverse('api-usage-csv')}?{urlencode(api_query)}",
        "api_url": f"{reverse('api-usage')}?{urlencode(api_query)}",
        "chart_data": _chart_data(grouped, chosen, names, groups, charts, latency_rows),
    }


def _latency_rows(overall: dict, label) -> list[dict]:
    """One row per bucket of the whole range: requests, errors, p50 and p95."""
    rows = []
    points = {point["bucket"]: point for point in overall["data"]}
    for bucket in overall["buckets"]:
        point = points.get(bucket, {})
        rows.append(
            {
                "bucket": bucket,
                "label": label(bucket),
                "requests": point.get("requests", 0),
                "errors": point.get("errors", 0),
                "error_rate": point.get("error_rate", 0.0),
                "p50": point.get("latency_p50_ms"),
                "p95": point.get("latency_p95_ms"),
            }
        )
    return rows


def _latency_summary(totals: dict) -> str:
    if not totals["requests"]:
        return "Latency: no requests in this range."
    return (
        f"Latency over the range: p50 {totals['latency_p50_ms']} ms, p95 "
        f"{totals['latency_p95_ms']} ms, p99 {totals['latency_p99_ms']} ms; "
        f"{totals['errors']} errors in {totals['requests']} requests "
        f"({totals['error_rate'] * 100:.2f}%)."
    )


def _api_query(grouped: dict, chosen: ranges.Range, group_by: str, key_ids, models) -> dict:
    """The /api/usage query of the same range (the CSV and JSON links)."""
    api_query = {
        "start": grouped["start"],
        "end": grouped["end"],
        "granularity": chosen.granularity,
        "group_by": group_by,
    }
    if key_ids:
        api_query["key"] = key_ids[0]
    if models:
        api_query["model"] = models[0]
    return api_query


def _chart_data(grouped, chosen, names, groups, charts, latency_rows) -> dict:
    """What usage.js draws: bucket times, the stacked series per group, the latency lines."""
    return {
        "buckets": [
            int(datetime.fromisoformat(b.replace("Z", "+00:00")).timestamp())
            for b in grouped["buckets"]
        ],
        "granularity": chosen.granularity,
        "groups": names,
        "stacked": {
            chart["id"]: [
                [float(row["values"][index]) for row in chart["rows"]]
                for index in range(len(groups))
            ]
            for chart in charts
        },
        "latency": {
            "p50": [row["p50"] for row in latency_rows],
            "p95": [row["p95"] for row in latency_rows],
            "error_rate": [row["error_rate"] * 100 for row in latency_rows],
        },
    }


@organization_required
def usage_page(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    chosen = ranges.resolve(
        request.GET.get("range"), request.GET.get("start"), request.GET.get("end"), timezone.now()
    )
    if request.GET.get("range") == ranges.CUSTOM and chosen.preset != ranges.CUSTOM:
        messages.warning(
            request,
            "That custom range cannot be shown: give From and To as dates, From on or before "
            f"To, at most {ranges.MAX_CUSTOM_DAYS} days apart. Showing the last 7 days instead.",
        )
    group_by = GROUPS.get(request.GET.get("group", ""), "model")
    keys = list(api_key_list(organization=organization).order_by("name", "key_id"))
    models = rollup_models(organization=organization)
    key_id = request.GET.get("key", "")
    key_id = key_id if any(key.key_id == key_id for key in keys) else ""
    model = request.GET.get("model", "")
    model = model if model in models else ""
    context = _usage_context(
        organization,
        chosen,
        group_by,
        key_ids=[key_id] if key_id else None,
        models=[model] if model else None,
    )
    return render(
        request,
        "dashboard/usage.html",
        {
            **context,
            "presets": ranges.PRESETS,
            "keys": keys,
            "models": models,
            "key_id": key_id,
            "model": model,
        },
    )


@never_cache
@organization_required
def key_detail(request: HttpRequest, ident: str) -> HttpResponse:
    """A key: its settings, limits, rotation lineage, and its usage over the last 30 days."""
    organization = request.organization
    try:
        key = api_key_get(organization=organization, ident=ident)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("dashboard:keys")
    chosen = ranges.resolve("30d", None, None, timezone.now())
    context = _usage_context(organization, chosen, "model", key_ids=[key.key_id])
    rotated_to = getattr(key, "rotated_to", None)  # None when it was never rotated
    return render(
        request,
        "keys/detail.html",
        {
            **context,
            "key": key,
            "effective_scopes": sorted(api_key_effective_scopes(key)),
            "inactive_scopes": sorted(set(key.scopes) - api_key_effective_scopes(key)),
            "limits": key.effective_limits(organization.plan, organization),
            "overrides": {field: getattr(key, field) for field in key.LIMIT_FIELDS},
            "rotated_to": rotated_to,
            "now": timezone.now(),
        },
    )
