"""The dashboard's team page: members, roles, invitations and the transfer of ownership.

Every write is a POST (CSRF) that calls one service; the services hold the rules (who may do
what: accounts/services/rules.py) and these views turn their refusals into messages.
"""

from collections.abc import Callable

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from accounts.actors import Actor
from accounts.forms import InviteForm
from accounts.models import ROLE_RANK, Role
from accounts.selectors import invitation_list_open, organization_members
from accounts.services import (
    Link,
    invitation_create,
    invitation_resend,
    invitation_revoke,
    membership_remove,
    membership_role_change,
    ownership_transfer,
)
from accounts.tenancy import organization_required
from accounts.views import INVITE_RATELIMIT_GROUP, _invite_rate
from infra.errors import ApplicationError

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


def _team_action(service, success: str, ids: dict[str, str], extra=None, limited=False):
    """A POST view that calls one team service on this organization, by this person, with the
    ids posted (`ids`: keyword -> form field) and `extra(request)`'s keywords; its refusal
    becomes a message. Back to the team page either way. `limited`: counts as an invitation
    email (RATELIMIT_INVITE)."""

    def view(request: HttpRequest) -> HttpResponse:
        fields = {name: _id(request, posted) for name, posted in ids.items()}
        fields |= extra(request) if extra is not None else {}
        organization, actor = request.organization, _actor(request)
        _attempt(
            request, lambda: service(organization=organization, actor=actor, **fields), success
        )
        return redirect("dashboard:team")

    view = organization_required(view)
    return require_POST(_invite_limit(view) if limited else view)


invitation_resend_view = _team_action(
    invitation_resend,
    "Invitation sent again; the previous link no longer works.",
    {"invitation_id": "invitation"},
    extra=lambda request: {"link": _link(request)},
    limited=True,
)
invitation_revoke_view = _team_action(
    invitation_revoke,
    "Invitation withdrawn; its link no longer works.",
    {"invitation_id": "invitation"},
)
member_role = _team_action(
    membership_role_change,
    "Role changed.",
    {"membership_id": "membership"},
    extra=lambda request: {"role": request.POST.get("role", "")},
)
member_remove = _team_action(
    membership_remove,
    "Member removed; their keys stopped working.",
    {"membership_id": "membership"},
)
owner_transfer = _team_action(
    ownership_transfer,
    "Ownership transferred; you are now an admin.",
    {"membership_id": "membership"},
)
