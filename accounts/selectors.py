from django.db.models import QuerySet

from accounts.models import Invitation, Membership, Organization, User
from infra.errors import ApplicationError

ORGANIZATION_NOT_FOUND = "organization_not_found"


def membership_list(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization", "organization__plan")


def membership_current(*, user: User, organization_id: int | None) -> Membership | None:
    """The membership of `user` in the organization chosen in the session, else their first.

    Only the user's own memberships are ever candidates, so a tampered session value can at
    worst fall back to the first organization, never reach a foreign one.
    """
    memberships = membership_list(user=user)
    if organization_id is not None:
        chosen = memberships.filter(organization_id=organization_id).first()
        if chosen is not None:
            return chosen
    return memberships.order_by("created_at", "id").first()


def organization_members(*, organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("created_at", "id")
    )


def organization_get(*, slug: str) -> Organization:
    try:
        return Organization.objects.select_related("plan").get(slug=slug, deleted_at__isnull=True)
    except Organization.DoesNotExist:
        raise ApplicationError(
            ORGANIZATION_NOT_FOUND, f"No organization with slug {slug!r}.", status=404
        ) from None


def invitation_list_open(*, organization: Organization) -> QuerySet[Invitation]:
    """Invitations not yet accepted or revoked (expired ones included: they can be resent)."""
    return (
        Invitation.objects.filter(
            organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
        )
        .select_related("invited_by")
        .order_by("-sent_at", "-id")
    )
