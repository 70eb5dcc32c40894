from accounts.selectors import membership_list


def current_organization(request) -> dict:
    """Expose the current organization and the switcher's list to every dashboard template."""
    membership = getattr(request, "membership", None)
    if membership is None:
        return {}
    return {
        "current_membership": membership,
        "current_organization": membership.organization,
        "memberships": membership_list(user=request.user),
    }
