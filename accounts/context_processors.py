from accounts.selectors import membership_current, membership_list
from accounts.tenancy import SESSION_KEY


def current_organization(request) -> dict:
    """Expose the current organization and the switcher's list to every template, so every page
    a member sees (new organization, password change, an invitation) has the same top bar."""
    membership = getattr(request, "membership", None)
    user = getattr(request, "user", None)
    if membership is None and user is not None and user.is_authenticated:
        session = getattr(request, "session", None)
        chosen = session.get(SESSION_KEY) if session is not None else None
        membership = membership_current(user=user, organization_id=chosen)
    if membership is None:
        return {}
    return {
        "current_membership": membership,
        "current_organization": membership.organization,
        "memberships": membership_list(user=request.user),
    }
