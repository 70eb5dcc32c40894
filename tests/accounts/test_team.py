"""Team rules, role by role: who may invite, change roles, remove, transfer, leave, rename and
delete. Every path goes through accounts.services; the rule is accounts/services/rules.py."""

import pytest

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Membership, Organization, Role
from accounts.services import (
    DELETE_CONFIRMATION_MISMATCH,
    Link,
    invitation_create,
    membership_leave,
    membership_remove,
    membership_role_change,
    organization_delete_by_owner,
    organization_rename,
    ownership_transfer,
)
from accounts.services.rules import (
    LAST_OWNER,
    NOT_A_MANAGER,
    OWNER_ONLY,
    ROLE_ABOVE_YOURS,
)
from accounts.services.team import USE_LEAVE
from infra.errors import ApplicationError
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

LINK = Link(base_url="http://testserver")
ROLES = [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER]


def actor(membership: Membership) -> Actor:
    return Actor(user=membership.user, role=membership.role, ip="192.0.2.1")


@pytest.fixture
def org() -> Organization:
    return OrganizationFactory(name="Acme", slug="acme")


@pytest.fixture
def team(org) -> dict[str, Membership]:
    """One person per role, and a second owner-less organization to compare with."""
    return {
        role: MembershipFactory(
            organization=org, role=role, user__email=f"{role}@acme.example", user__password="!"
        )
        for role in ROLES
    }


def refusal(fn) -> str:
    with pytest.raises(ApplicationError) as caught:
        fn()
    return caught.value.code


# (actor's role, invited role) → allowed: owners/admins invite up to their own role.
INVITE_CASES = [
    (
        actor_role,
        role,
        actor_role in (Role.OWNER, Role.ADMIN) and ROLES.index(role) <= ROLES.index(actor_role),
    )
    for actor_role in ROLES
    for role in ROLES
]


@pytest.mark.parametrize(("actor_role", "role", "allowed"), INVITE_CASES)
def test_who_may_invite_with_which_role(team, org, actor_role, role, allowed, mailoutbox):
    def invite():
        return invitation_create(
            organization=org,
            actor=actor(team[actor_role]),
            email="new@x.example",
            role=role,
            link=LINK,
        )

    if allowed:
        assert invite().role == role
        assert len(mailoutbox) == 1
    else:
        code = refusal(invite)
        assert code == (
            NOT_A_MANAGER if actor_role in (Role.VIEWER, Role.MEMBER) else ROLE_ABOVE_YOURS
        )
        assert mailoutbox == []
        assert not AuditEvent.objects.filter(action=AuditAction.MEMBER_INVITED).exists()


# (actor, target, new role) → expected refusal code, or None when it is allowed.
ROLE_CHANGE_CASES = [
    (Role.VIEWER, Role.MEMBER, Role.VIEWER, NOT_A_MANAGER),
    (Role.MEMBER, Role.VIEWER, Role.MEMBER, NOT_A_MANAGER),
    (Role.ADMIN, Role.MEMBER, Role.ADMIN, None),
    (Role.ADMIN, Role.VIEWER, Role.MEMBER, None),
    (Role.ADMIN, Role.MEMBER, Role.OWNER, ROLE_ABOVE_YOURS),  # cannot make an owner
    (Role.ADMIN, Role.OWNER, Role.VIEWER, ROLE_ABOVE_YOURS),  # cannot demote an owner
    (Role.OWNER, Role.ADMIN, Role.MEMBER, None),
    (Role.OWNER, Role.MEMBER, Role.OWNER, None),  # owners may make owners
    (Role.OWNER, Role.OWNER, Role.ADMIN, LAST_OWNER),  # the only owner demoting themself
]


@pytest.mark.parametrize(("actor_role", "target_role", "new_role", "code"), ROLE_CHANGE_CASES)
def test_who_may_change_whose_role(team, org, actor_role, target_role, new_role, code):
    target = team[target_role]

    def change():
        return membership_role_change(
            organization=org, actor=actor(team[actor_role]), membership_id=target.pk, role=new_role
        )

    if code is None:
        change()
        target.refresh_from_db()
        assert target.role == new_role
        event = AuditEvent.objects.get(action=AuditAction.MEMBER_ROLE_CHANGED)
        assert event.target_label == target.user.email
        assert event.metadata == {"from": target_role, "to": new_role}
        assert event.actor_label == team[actor_role].user.email
    else:
        assert refusal(change) == code
        target.refresh_from_db()
        assert target.role == target_role


REMOVE_CASES = [
    (Role.VIEWER, Role.MEMBER, NOT_A_MANAGER),
    (Role.MEMBER, Role.VIEWER, NOT_A_MANAGER),
    (Role.ADMIN, Role.MEMBER, None),
    (Role.ADMIN, Role.ADMIN, USE_LEAVE),  # the admin themself: leaving is another path
    (Role.ADMIN, Role.OWNER, ROLE_ABOVE_YOURS),  # cannot remove an owner
    (Role.OWNER, Role.ADMIN, None),
    (Role.OWNER, Role.VIEWER, None),
]


@pytest.mark.parametrize(("actor_role", "target_role", "code"), REMOVE_CASES)
def test_who_may_remove_whom(team, org, actor_role, target_role, code):
    target = team[target_role]

    def remove():
        membership_remove(organization=org, actor=actor(team[actor_role]), membership_id=target.pk)

    if code is None:
        remove()
        assert not Membership.objects.filter(pk=target.pk).exists()
        event = AuditEvent.objects.get(action=AuditAction.MEMBER_REMOVED)
        assert event.target_label == target.user.email
    else:
        assert refusal(remove) == code
        assert Membership.objects.filter(pk=target.pk).exists()


def test_a_person_of_another_organization_cannot_act_here(team, org):
    stranger = MembershipFactory(role=Role.OWNER)
    code = refusal(
        lambda: membership_remove(
            organization=org, actor=actor(stranger), membership_id=team[Role.MEMBER].pk
        )
    )
    assert code == NOT_A_MANAGER


def test_a_membership_of_another_organization_is_not_found_here(team, org):
    elsewhere = MembershipFactory(role=Role.MEMBER)
    with pytest.raises(ApplicationError) as caught:
        membership_remove(
            organization=org, actor=actor(team[Role.OWNER]), membership_id=elsewhere.pk
        )
    assert caught.value.status == 404
    assert Membership.objects.filter(pk=elsewhere.pk).exists()


def test_a_demoted_admin_can_no_longer_manage_at_once(team, org):
    """The rule reads the actor's membership now, not the role the request started with."""
    admin = team[Role.ADMIN]
    stale = actor(admin)
    Membership.objects.filter(pk=admin.pk).update(role=Role.MEMBER)
    code = refusal(
        lambda: membership_remove(organization=org, actor=stale, membership_id=team[Role.VIEWER].pk)
    )
    assert code == NOT_A_MANAGER


@pytest.mark.parametrize("actor_role", [Role.VIEWER, Role.MEMBER, Role.ADMIN])
def test_only_an_owner_transfers_ownership(team, org, actor_role):
    code = refusal(
        lambda: ownership_transfer(
            organization=org, actor=actor(team[actor_role]), membership_id=team[Role.VIEWER].pk
        )
    )
    assert code == OWNER_ONLY


def test_transfer_makes_the_target_owner_and_the_owner_an_admin(team, org):
    ownership_transfer(
        organization=org, actor=actor(team[Role.OWNER]), membership_id=team[Role.MEMBER].pk
    )
    roles = dict(Membership.objects.filter(organization=org).values_list("user__email", "role"))
    assert roles["member@acme.example"] == Role.OWNER
    assert roles["owner@acme.example"] == Role.ADMIN
    assert list(roles.values()).count(Role.OWNER) == 1
    event = AuditEvent.objects.get(action=AuditAction.OWNERSHIP_TRANSFERRED)
    assert event.target_label == "member@acme.example"


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER, Role.ADMIN])
def test_anyone_but_the_last_owner_may_leave(team, org, role):
    membership_leave(organization=org, actor=actor(team[role]))
    assert not Membership.objects.filter(pk=team[role].pk).exists()
    event = AuditEvent.objects.get(action=AuditAction.MEMBER_LEFT)
    assert event.target_label == f"{role}@acme.example"


def test_the_last_owner_cannot_leave_but_one_of_two_owners_can(team, org):
    owner = team[Role.OWNER]
    assert refusal(lambda: membership_leave(organization=org, actor=actor(owner))) == LAST_OWNER
    second = MembershipFactory(organization=org, role=Role.OWNER)
    membership_leave(organization=org, actor=actor(owner))
    assert list(Membership.objects.filter(organization=org, role=Role.OWNER)) == [second]


def test_an_owner_cannot_be_demoted_when_alone_even_by_another_path(team, org):
    code = refusal(
        lambda: membership_role_change(
            organization=org,
            actor=actor(team[Role.OWNER]),
            membership_id=team[Role.OWNER].pk,
            role=Role.VIEWER,
        )
    )
    assert code == LAST_OWNER


@pytest.mark.parametrize(
    ("role", "code"),
    [
        (Role.VIEWER, NOT_A_MANAGER),
        (Role.MEMBER, NOT_A_MANAGER),
        (Role.ADMIN, None),
        (Role.OWNER, None),
    ],
)
def test_who_may_rename(team, org, role, code):
    def rename():
        organization_rename(organization=org, actor=actor(team[role]), name="Acme Labs")

    if code is None:
        rename()
        org.refresh_from_db()
        assert (org.name, org.slug) == ("Acme Labs", "acme")
        event = AuditEvent.objects.get(action=AuditAction.ORGANIZATION_RENAMED)
        assert event.metadata == {"from": "Acme", "to": "Acme Labs"}
    else:
        assert refusal(rename) == code


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER, Role.ADMIN])
def test_only_an_owner_deletes(team, org, role):
    code = refusal(
        lambda: organization_delete_by_owner(
            organization=org, actor=actor(team[role]), confirmation="Acme"
        )
    )
    assert code == OWNER_ONLY
    assert Organization.objects.filter(pk=org.pk, deleted_at__isnull=True).exists()


def test_delete_needs_the_name_typed(team, org):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        organization_delete_by_owner(
            organization=org, actor=actor(team[Role.OWNER]), confirmation="acme"
        )
    assert DELETE_CONFIRMATION_MISMATCH in caught.value.messages
    assert Organization.objects.filter(pk=org.pk).exists()


def test_deleting_an_organization_without_keys_or_usage_removes_it_and_keeps_the_audit(team, org):
    organization_rename(organization=org, actor=actor(team[Role.OWNER]), name="Acme")  # no-op
    invitation_create(
        organization=org,
        actor=actor(team[Role.OWNER]),
        email="x@y.example",
        role="member",
        link=LINK,
    )
    deleted = organization_delete_by_owner(
        organization=org, actor=actor(team[Role.OWNER]), confirmation=" Acme "
    )
    assert deleted is True
    assert not Organization.objects.filter(pk=org.pk).exists()
    events = AuditEvent.objects.filter(organization_slug="acme")
    assert set(events.values_list("action", flat=True)) == {
        AuditAction.MEMBER_INVITED,
        AuditAction.ORGANIZATION_DELETED,
    }
