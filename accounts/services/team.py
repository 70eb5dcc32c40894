"""Writes on an organization's members: add, change role, remove, leave, transfer ownership.

Every path checks the rules of accounts/services/rules.py against the actor's membership read
under lock now (a demotion a second ago counts), and every change is audited. A member's keys
follow their membership on their next request (keys/signals.py listens to Membership saves and
deletes).
"""

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Membership, Organization, Role, User
from accounts.services import rules
from infra.errors import ApplicationError

NOT_A_MEMBER = "team_not_a_member"
NOT_A_MEMBER_MESSAGE = "That person is not a member of this organization."
USE_LEAVE = "team_use_leave"
USE_LEAVE_MESSAGE = "To remove yourself, leave the organization from its settings."
ALREADY_OWNER = "team_already_owner"


def acting_membership(*, actor: Actor, organization: Organization) -> Membership:
    """The actor's membership in `organization`, locked; operators act as an owner."""
    if actor.system:  # manage.py, the Django admin
        return Membership(organization=organization, user=actor.user, role=Role.OWNER)
    membership = (
        Membership.objects.select_for_update()
        .filter(organization=organization, user=actor.user)
        .first()
        if actor.user is not None
        else None
    )
    if membership is None:
        raise ApplicationError(rules.NOT_A_MANAGER, rules.NOT_A_MANAGER_MESSAGE, status=403)
    return membership


def _target(organization: Organization, membership_id: int) -> Membership:
    target = (
        Membership.objects.select_for_update()
        .select_related("user")
        .filter(organization=organization, pk=membership_id)
        .first()
    )
    if target is None:
        raise ApplicationError(NOT_A_MEMBER, NOT_A_MEMBER_MESSAGE, status=404)
    return target


def _audit(action: str, actor: Actor, target: Membership, metadata: dict) -> None:
    audit_record(
        action=action,
        actor=actor,
        organization=target.organization,
        target_type="user",
        target_id=str(target.user_id),
        target_label=target.user.email,
        metadata=metadata,
    )


@transaction.atomic
def membership_add(
    *, organization: Organization, user: User, role: str = Role.MEMBER
) -> Membership:
    """Operators' path (bootstrap, tests): make `user` a member with `role`, unchecked."""
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}; one of {', '.join(Role.values)}."})
    membership, created = Membership.objects.get_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    if not created and membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_role_change(
    *, organization: Organization, actor: Actor, membership_id: int, role: str
) -> Membership:
    """Change a member's role. The actor may neither grant a role above their own nor act on
    someone above them; the last owner cannot be demoted. Changing to the same role is a no-op."""
    acting = acting_membership(actor=actor, organization=organization)
    rules.rank(role)
    target = _target(organization, membership_id)
    rules.require_may_act_on(acting, target.role)
    rules.require_may_grant(acting, role)
    if target.role == role:
        return target
    rules.require_owner_remains(target, new_role=role)
    before = target.role
    target.role = role
    target.save(update_fields=["role"])
    _audit(AuditAction.MEMBER_ROLE_CHANGED, actor, target, {"from": before, "to": role})
    return target


@transaction.atomic
def membership_remove(*, organization: Organization, actor: Actor, membership_id: int) -> None:
    """Remove a member (not oneself: that is `membership_leave`). Their keys stop working on
    their next request: the keys' effective scopes follow the membership."""
    acting = acting_membership(actor=actor, organization=organization)
    target = _target(organization, membership_id)
    if target.pk == acting.pk:
        raise ApplicationError(USE_LEAVE, USE_LEAVE_MESSAGE, status=400)
    rules.require_may_act_on(acting, target.role)
    rules.require_owner_remains(target, new_role=None)
    _audit(AuditAction.MEMBER_REMOVED, actor, target, {"role": target.role})
    target.delete()


@transaction.atomic
def membership_leave(*, organization: Organization, actor: Actor) -> None:
    """The actor leaves the organization; the last owner cannot (transfer ownership first)."""
    acting = acting_membership(actor=actor, organization=organization)
    if acting.pk is None:
        raise ApplicationError(NOT_A_MEMBER, NOT_A_MEMBER_MESSAGE, status=404)
    rules.require_owner_remains(acting, new_role=None)
    _audit(AuditAction.MEMBER_LEFT, actor, acting, {"role": acting.role})
    acting.delete()


@transaction.atomic
def ownership_transfer(
    *, organization: Organization, actor: Actor, membership_id: int
) -> Membership:
    """An owner hands ownership to another member: they become owner, the actor an admin."""
    acting = acting_membership(actor=actor, organization=organization)
    rules.require_owner(acting)
    target = _target(organization, membership_id)
    if target.pk == acting.pk:
        raise ApplicationError(ALREADY_OWNER, "You already own this organization.", status=400)
    before = target.role
    target.role = Role.OWNER
    target.save(update_fields=["role"])
    if acting.pk is not None:
        acting.role = Role.ADMIN
        acting.save(update_fields=["role"])
    _audit(
        AuditAction.OWNERSHIP_TRANSFERRED,
        actor,
        target,
        {"from_role": before, "previous_owner_now": Role.ADMIN.value},
    )
    return target
