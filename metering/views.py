"""Dashboard pages of metering: the overview (plan, team size, limits and quota use)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.selectors import organization_members
from accounts.tenancy import organization_required
from metering.selectors import organization_limit_overview


@organization_required
def overview(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    return render(
        request,
        "dashboard/overview.html",
        {
            "plan": organization.plan,
            "members": organization_members(organization=organization),
            "limits": organization_limit_overview(organization),
        },
    )
