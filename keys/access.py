"""Who and which organization an /api request acts for, and the permission classes for it.

A request is authenticated by dashboard session (with CSRF), by JWT, or by an API key:
- a key acts for its own organization with the role of an admin, limited by its scopes;
- a user acts for the organization named in the `X-Organization` header (slug), else the one
  chosen in their dashboard session, else their first; only their own memberships count.
"""

from rest_framework.permissions import BasePermission

from accounts.actors import Actor
from accounts.models import Organization, Role
from accounts.selectors import membership_current, membership_list
from accounts.tenancy import SESSION_KEY
from infra.errors import ApplicationError
from keys.authentication import key_context
from keys.permissions import INSUFFICIENT_SCOPE

NO_ORGANIZATION = "no_organization"
INSUFFICIENT_ROLE = "insufficient_role"


class Access:
    __slots__ = ("actor", "organization")

    def __init__(self, organization: Organization, actor: Actor) -> None:
        self.organization = organization
        self.actor = actor


def resolve_access(request) -> Access:
    cached = getattr(request, "_aibaas_access", None)
    if cached is not None:
        return cached
    context = key_context(request)
    if context is not None:
        organization = Organization.objects.select_related("plan").get(pk=context.organization_id)
        access = Access(organization, Actor.for_key(request, context.key_id, Role.ADMIN))
    else:
        user = request.user
        slug = request.headers.get("X-Organization", "").strip()
        if slug:
            membership = membership_list(user=user).filter(organization__slug=slug).first()
            if membership is None:
                raise ApplicationError(
                    NO_ORGANIZATION, f"You are not a member of organization {slug!r}.", status=403
                )
        else:
            session = getattr(request, "session", None)
            chosen = session.get(SESSION_KEY) if session is not None else None
            membership = membership_current(user=user, organization_id=chosen)
            if membership is None:
                raise ApplicationError(
                    NO_ORGANIZATION, "You are not a member of any organization.", status=403
                )
        access = Access(membership.organization, Actor.for_user(request, user, membership.role))
    request._aibaas_access = access
    return access


class OrganizationAccess(BasePermission):
    """Authenticated (user or key), with a view-declared key scope and a role for writes.

    Views set `key_scopes` (any of them admits a key; `admin` always does) and, for writes,
    `write_roles` (default owner/admin/member: members act on what they own, which the
    services check).
    """

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

    def has_permission(self, request, view) -> bool:
        context = key_context(request)
        if context is None and not (request.user and request.user.is_authenticated):
            return False  # DRF answers 401
        if context is not None:
            scopes = getattr(view, "key_scopes", ("admin",))
            if not any(context.has_scope(scope) for scope in scopes):
                raise ApplicationError(
                    INSUFFICIENT_SCOPE,
                    f"This API key lacks the scope this endpoint needs: one of "
                    f"{', '.join(scopes)}.",
                    status=403,
                )
        access = resolve_access(request)
        if request.method not in self.SAFE_METHODS:
            roles = getattr(view, "write_roles", (Role.OWNER, Role.ADMIN, Role.MEMBER))
            if access.actor.role not in roles:
                raise ApplicationError(
                    INSUFFICIENT_ROLE,
                    f"Your role ({access.actor.role}) cannot do this; "
                    f"it needs one of {', '.join(roles)}.",
                    status=403,
                )
        return True
