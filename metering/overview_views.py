"""The dashboard's overview (/dashboard/): plan, this month's counters against the quota, spend,
a 30-day sparkline; and /dashboard/overview.json, the same counters for static/js/overview.js
to refresh in place. Both read the rollups (one query for the counters), never raw events."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.selectors import organization_members
from accounts.tenancy import organization_required
from keys.selectors import api_key_list
from metering.models import UsageRollup
from metering.rollups import ranges
from metering.rollups.selectors import usage_series
from metering.selectors import organization_limit_overview, organization_month_counters


def _sparkline(values: list, width: int = 300, height: int = 48) -> str:
    """SVG polyline points of `values` scaled into width x height (2 px margin)."""
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{index * step:.1f},{height - 2 - (value / top) * (height - 4):.1f}"
        for index, value in enumerate(values)
    )


@organization_required
def overview(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    last_30 = ranges.resolve("30d", None, None, timezone.now())
    daily = usage_series(
        organization=organization, start=last_30.start, end=last_30.end, granularity=UsageRollup.DAY
    )
    per_day = {point["bucket"]: point["requests"] for point in daily["data"]}
    requests = [per_day.get(bucket, 0) for bucket in daily["buckets"]]
    busiest = max(range(len(requests)), key=requests.__getitem__) if any(requests) else None
    used = UsageRollup.objects.filter(organization=organization).exists()
    return render(
        request,
        "dashboard/overview.html",
        {
            "plan": organization.plan,
            "members": organization_members(organization=organization),
            "limits": organization_limit_overview(organization),
            "sparkline": {
                "points": _sparkline(requests),
                "total": sum(requests),
                "cost": daily["totals"]["cost"],
                "busiest": daily["buckets"][busiest][:10] if busiest is not None else None,
                "busiest_requests": requests[busiest] if busiest is not None else 0,
                "first": daily["buckets"][0][:10],
            },
            "onboarding": not used,
            "has_key": api_key_list(organization=organization).exists(),
        },
    )


@never_cache
@require_GET
@organization_required
def overview_counters(request: HttpRequest) -> JsonResponse:
    """This month's counters of the current organization, as the overview shows them: a
    session's JSON (the page's own script polls it), one query on the rollups."""
    counters = organization_month_counters(request.organization)
    return JsonResponse(
        {
            "period": {
                "start": counters["period_start"].isoformat(),
                "end": counters["period_end"].isoformat(),
            },
            "requests": counters["requests"],
            "tokens": counters["tokens"],
            "cost": counters["cost"],
            "refused": counters["refused"],
            "errors": counters["errors"],
            "as_of": timezone.now().isoformat(),
        }
    )
