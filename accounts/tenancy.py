"""Which organization a dashboard request acts for.

The current organization is kept in the session; every dashboard view goes through
`organization_required`, which resolves it among the user's own memberships only.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect

from accounts.models import Membership
from accounts.selectors import membership_current

SESSION_KEY = "current_organization_id"


def set_current_organization(request, membership: Membership) -> None:
    request.session[SESSION_KEY] = membership.organization_id


def organization_required(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        membership = membership_current(
            user=request.user, organization_id=request.session.get(SESSION_KEY)
        )
        if membership is None:
            return redirect("dashboard:organization_create")
        if request.session.get(SESSION_KEY) != membership.organization_id:
            set_current_organization(request, membership)
        request.membership = membership
        request.organization = membership.organization
        return view(request, *args, **kwargs)

    return wrapper
