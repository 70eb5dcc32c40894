"""Dashboard pages of the organization's settings: rename, leave, delete. Every write is a POST
(CSRF) that calls one service (accounts/services), whose refusals become messages."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.forms import DeleteOrganizationForm, RenameForm
from accounts.services import membership_leave, organization_delete_by_owner, organization_rename
from accounts.team_views import _actor, _attempt
from accounts.tenancy import SESSION_KEY, organization_required


@organization_required
def organization_settings(request: HttpRequest) -> HttpResponse:
    rename = RenameForm(
        request.POST if request.method == "POST" else None,
        initial={"name": request.organization.name},
    )
    if request.method == "POST" and rename.is_valid():
        name = rename.cleaned_data["name"]
        if _attempt(
            request,
            lambda: organization_rename(
                organization=request.organization, actor=_actor(request), name=name
            ),
            f"Renamed to {name}.",
        ):
            return redirect("dashboard:settings")
    return render(
        request,
        "dashboard/settings.html",
        {"rename_form": rename, "delete_form": DeleteOrganizationForm()},
    )


@require_POST
@organization_required
def organization_leave(request: HttpRequest) -> HttpResponse:
    name = request.organization.name
    if _attempt(
        request,
        lambda: membership_leave(organization=request.organization, actor=_actor(request)),
        f"You left {name}.",
    ):
        request.session.pop(SESSION_KEY, None)
        return redirect("dashboard:overview")
    return redirect("dashboard:settings")


@require_POST
@organization_required
def organization_delete(request: HttpRequest) -> HttpResponse:
    form = DeleteOrganizationForm(request.POST)
    confirmation = request.POST.get("confirmation", "")
    name = request.organization.name
    if form.is_valid() and _attempt(
        request,
        lambda: organization_delete_by_owner(
            organization=request.organization, actor=_actor(request), confirmation=confirmation
        ),
        f"{name} is deleted: its keys are revoked; its audit log is kept.",
    ):
        request.session.pop(SESSION_KEY, None)
        return redirect("dashboard:overview")
    if not form.is_valid():
        messages.error(request, "Type the organization's name to confirm.")
    return redirect("dashboard:settings")
