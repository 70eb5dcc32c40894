"""Who may change the team: one rule, used by every path (dashboard, admin-free services).

Owners and admins manage the team; nobody grants or acts above the role they hold: an admin can
invite, promote to or demote from at most admin, and cannot remove, demote or act on an owner.
An organization always keeps at least one owner. Members and viewers manage nothing but their
own departure.
"""

from accounts.models import ROLE_RANK, Membership, Role
from infra.errors import ApplicationError

NOT_A_MANAGER = "team_not_manager"
NOT_A_MANAGER_MESSAGE = "Only owners and admins manage the team."
ROLE_ABOVE_YOURS = "team_role_above_yours"
ROLE_ABOVE_YOURS_MESSAGE = "You cannot grant or act on a role above your own ({role})."
LAST_OWNER = "team_last_owner"
LAST_OWNER_MESSAGE = (
    "An organization always keeps an owner: transfer ownership or make someone else an owner first."
)
OWNER_ONLY = "team_owner_only"
OWNER_ONLY_MESSAGE = "Only an owner can do this."
UNKNOWN_ROLE = "team_unknown_role"


def rank(role: str) -> int:
    try:
        return ROLE_RANK[Role(role)]
    except ValueError:
        raise ApplicationError(
            UNKNOWN_ROLE, f"Unknown role {role!r}; one of {', '.join(Role.values)}.", status=400
        ) from None


def require_manager(actor: Membership) -> None:
    if actor.role not in (Role.OWNER, Role.ADMIN):
        raise ApplicationError(NOT_A_MANAGER, NOT_A_MANAGER_MESSAGE, status=403)


def require_owner(actor: Membership) -> None:
    if actor.role != Role.OWNER:
        raise ApplicationError(OWNER_ONLY, OWNER_ONLY_MESSAGE, status=403)


def require_may_grant(actor: Membership, role: str) -> None:
    """The actor manages the team and `role` is not above their own."""
    require_manager(actor)
    if rank(role) > rank(actor.role):
        message = ROLE_ABOVE_YOURS_MESSAGE.format(role=actor.get_role_display().lower())
        raise ApplicationError(ROLE_ABOVE_YOURS, message, status=403)


def require_may_act_on(actor: Membership, target_role: str) -> None:
    """The actor manages the team and the person (or invitation) acted on is not above them."""
    require_may_grant(actor, target_role)


def require_owner_remains(target: Membership, *, new_role: str | None) -> None:
    """Demoting or removing `target` (new_role None) leaves the organization an owner."""
    if target.role != Role.OWNER or new_role == Role.OWNER:
        return
    others = (
        Membership.objects.select_for_update()
        .filter(organization_id=target.organization_id, role=Role.OWNER)
        .exclude(pk=target.pk)
    )
    if not others.exists():
        raise ApplicationError(LAST_OWNER, LAST_OWNER_MESSAGE, status=409)
