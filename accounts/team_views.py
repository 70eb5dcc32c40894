"""Dashboard pages of the team and the organization's settings, and the invitation link.

Every write is a POST (CSRF) that calls one service; the services hold the rules (who may do
what: accounts/services/rules.py) and these views turn their refusals into messages.
"""

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth import login
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from accounts.actors import Actor
from accounts.forms import DeleteOrganizationForm, InvitationSignupForm, InviteForm, RenameForm
from accounts.models import ROLE_RANK, Role, User
from accounts.selectors import invitation_list_open, organization_members
from accounts.services import (
    Link,
    invitation_accept,
    invitation_create,
    invitation_resend,
    invitation_revoke,
    invitation_signup,
    membership_leave,
    membership_remove,
    membership_role_change,
    organization_delete_by_owner,
    organization_rename,
    ownership_transfer,
)
from accounts.services.invitations import invitation_check_address, invitation_from_token
from accounts.tenancy import SESSION_KEY, organization_required, set_current_organization
from accounts.views import INVITE_RATELIMIT_GROUP, _invite_rate, form_add_service_errors
from infra.errors import ApplicationError
from infra.http import client_ip, user_agent

# Each invitation is an email: a person may send (or resend) RATELIMIT_INVITE of them.
_invite_limit = ratelimit(
    group=INVITE_RATELIMIT_GROUP, key="user_or_ip", rate=_invite_rate, method="POST", block=True
)


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request, request.user, request.membership.role)


def _link(request: HttpRequest) -> Link:
    return Link(base_url=request.build_absolute_uri("/"))


def _grantable(role: str) -> list[str]:
    """The roles a person with `role` may give (the same rule the services enforce)."""
    if role not in (Role.OWNER, Role.ADMIN):
        return []
    return [r for r in Role.values if ROLE_RANK[Role(r)] <= ROLE_RANK[Role(role)]]


def _attempt(request: HttpRequest, action: Callable[[], object], success: str) -> bool:
    """Run a service; its refusal becomes an error message. True when it succeeded."""
    try:
        action()
    except ApplicationError as error:
        messages.error(request, error.message)
        return False
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return False
    messages.success(request, success)
    return True


def _id(request: HttpRequest, name: str) -> int:
    value = request.POST.get(name, "")
    return int(value) if value.isdigit() else 0


@organization_required
def team(request: HttpRequest, invite_form: InviteForm | None = None) -> HttpResponse:
    membership = request.membership
    grantable = _grantable(membership.role)
    members = list(organization_members(organization=request.organization))
    mine = ROLE_RANK[Role(membership.role)]
    rows = [
        {
            "membership": m,
            "is_me": m.pk == membership.pk,
            # What the page offers; the services decide (accounts/services/rules.py).
            "manageable": bool(grantable)
            and m.pk != membership.pk
            and ROLE_RANK[Role(m.role)] <= mine,
            "transferable": membership.role == Role.OWNER
            and m.pk != membership.pk
            and m.role != Role.OWNER,
        }
        for m in members
    ]
    context = {
        "members": members,
        "rows": rows,
        "invitations": invitation_list_open(organization=request.organization)
        if membership.is_admin
        else [],
        "grantable": grantable,
        "role_choices": [c for c in Role.choices if c[0] in grantable],
        "invite_form": invite_form or InviteForm(grantable=grantable),
        "owner_count": sum(1 for m in members if m.role == Role.OWNER),
    }
    return render(request, "dashboard/team.html", context)


@require_POST
@_invite_limit
@organization_required
def team_invite(request: HttpRequest) -> HttpResponse:
    form = InviteForm(request.POST, grantable=_grantable(request.membership.role))
    if not form.is_valid():
        if not request.membership.is_admin:
            messages.error(request, "Only owners and admins manage the team.")
            return redirect("dashboard:team")
        return team(request, invite_form=form)
    try:
        invitation = invitation_create(
            organization=request.organization,
            actor=_actor(request),
            link=_link(request),
            **form.cleaned_data,
        )
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("dashboard:team")
    except ValidationError as error:
        for message in error.messages:
            form.add_error("email", message)
        return team(request, invite_form=form)
    messages.success(
        request, f"Invitation sent to {invitation.email} ({invitation.get_role_display()})."
    )
    return redirect("dashboard:team")


@require_POST
@_invite_limit
@organization_required
def invitation_resend_view(request: HttpRequest) -> HttpResponse:
    _attempt(
        request,
        lambda: invitation_resend(
            organization=request.organization,
            actor=_actor(request),
            invitation_id=_id(request, "invitation"),
            link=_link(request),
        ),
        "Invitation sent again; the previous link no longer works.",
    )
    return redirect("dashboard:team")


@require_POST
@organization_required
def invitation_revoke_view(request: HttpRequest) -> HttpResponse:
    _attempt(
        request,
        lambda: invitation_revoke(
            organization=request.organization,
            actor=_actor(request),
            invitation_id=_id(request, "invitation"),
        ),
        "Invitation withdrawn; its link no longer works.",
    )
    return redirect("dashboard:team")


@require_POST
@organization_required
def member_role(request: HttpRequest) -> HttpResponse:
    role = request.POST.get("role", "")
    _attempt(
        request,
        lambda: membership_role_change(
            organization=request.organization,
            actor=_actor(request),
            membership_id=_id(request, "membership"),
            role=role,
        ),
        "Role changed.",
    )
    return redirect("dashboard:team")


@require_POST
@organization_required
def member_remove(request: HttpRequest) -> HttpResponse:
    _attempt(
        request,
        lambda: membership_remove(
            organization=request.organization,
            actor=_actor(request),
            membership_id=_id(request, "membership"),
        ),
        "Member removed; their keys stopped working.",
    )
    return redirect("dashboard:team")


@require_POST
@organization_required
def owner_transfer(request: HttpRequest) -> HttpResponse:
    _attempt(
        request,
        lambda: ownership_transfer(
            organization=request.organization,
            actor=_actor(request),
            membership_id=_id(request, "membership"),
        ),
        "Ownership transferred; you are now an admin.",
    )
    return redirect("dashboard:team")


# --- Organization settings -----------------------------------------------------------------


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


# --- The invitation link (public) ----------------------------------------------------------


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the email. GET only shows (mail scanners open links); joining is a POST:
    accept as the logged-in invitee, or sign up as the invited address."""
    try:
        invite = invitation_from_token(token=token)
    except ApplicationError as error:
        return render(
            request, "accounts/invitation.html", {"error": error.message}, status=error.status
        )
    user = request.user if request.user.is_authenticated else None
    context = {
        "invitation": invite,
        "organization": invite.organization,
        "token": token,
        "has_account": User.objects.filter(email__iexact=invite.email).exists(),
        "login_url": f"{reverse('accounts:login')}?next={request.path}",
        "signup_form": InvitationSignupForm(),
    }
    if user is not None:
        try:
            invitation_check_address(invitation=invite, user=user)
        except ApplicationError as error:
            context["other_address"] = error.message
    if request.method != "POST":
        return render(request, "accounts/invitation.html", context)

    if user is not None:
        actor = Actor.for_user(request, user, None)
        try:
            membership = invitation_accept(token=token, actor=actor)
        except (ApplicationError, ValidationError) as error:
            text = error.message if isinstance(error, ApplicationError) else error.messages[0]
            messages.error(request, text)
            return render(request, "accounts/invitation.html", context, status=400)
    else:
        form = InvitationSignupForm(request.POST)
        context["signup_form"] = form
        if not form.is_valid():
            return render(request, "accounts/invitation.html", context, status=400)
        try:
            membership = invitation_signup(
                token=token,
                actor=Actor(ip=client_ip(request), user_agent=user_agent(request)),
                **form.cleaned_data,
            )
        except ValidationError as error:
            form_add_service_errors(form, error)
            return render(request, "accounts/invitation.html", context, status=400)
        except ApplicationError as error:
            messages.error(request, error.message)
            return render(request, "accounts/invitation.html", context, status=400)
        login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
    set_current_organization(request, membership)
    messages.success(
        request,
        f"Welcome to {membership.organization.name}: you joined as "
        f"{membership.get_role_display().lower()}.",
    )
    return redirect("dashboard:overview")
