"""Who may hold which scope: the grant table, and a key's effective scopes.

Nobody grants more than they hold. A user holds the scopes of their role (ROLE_SCOPES); a key
holds its effective scopes: its own scopes ∩ what its creator's *current* role allows, so a
key follows its creator's demotion or departure at once. Keys issued by operators (manage.py,
the admin) have no human creator and keep their scopes (`ApiKey.operator_issued`). Pure.
"""

from keys.models import Scope

ALL_SCOPES = frozenset(Scope.values)

# The grant table (README "Roles and scopes", DESIGN.md "Rules of the domain").
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "owner": ALL_SCOPES,
    "admin": ALL_SCOPES,
    "member": frozenset({Scope.INFERENCE.value, Scope.USAGE_READ.value}),
    "viewer": frozenset(),
}


def role_scopes(role: str | None) -> frozenset[str]:
    """What a user of `role` holds; no role (not a member) holds nothing."""
    return ROLE_SCOPES.get(role or "", frozenset())


def implied(scopes) -> frozenset[str]:
    """What holding `scopes` lets one grant: `admin` is everything the organization may do."""
    scopes = frozenset(scopes)
    return ALL_SCOPES if Scope.ADMIN.value in scopes else scopes


def effective_scopes(scopes, *, operator_issued: bool, creator_role: str | None) -> frozenset[str]:
    """A key's power: its scopes, limited by its creator's current role in its organization
    (`creator_role` None: the creator left the organization, or their account was deactivated
    or deleted → nothing)."""
    granted = frozenset(scopes or ())
    if operator_issued:
        return granted
    allowed = role_scopes(creator_role)
    if Scope.ADMIN.value in granted and Scope.ADMIN.value not in allowed:
        granted = ALL_SCOPES  # an admin key of a demoted admin keeps what the new role allows
    return granted & allowed
