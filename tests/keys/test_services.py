"""Key services: validation, the plan's cap, roles, audit events, revoke and rotate rules."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.actors import Actor
from accounts.models import AuditAction, AuditEvent, Role
from billing.models import Plan
from infra.errors import ApplicationError
from keys import format as key_format
from keys.models import ApiKey, ApiKeyStatus
from keys.services import (
    FORBIDDEN,
    KEY_ALREADY_ROTATED,
    KEY_LIMIT_REACHED,
    KEY_NOT_ACTIVE,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
)
from tests.keys.conftest import actor_for

pytestmark = pytest.mark.django_db

SYSTEM = Actor.for_system("tests")


def create(org, actor=SYSTEM, **fields):
    fields.setdefault("name", "backend")
    return api_key_create(organization=org, actor=actor, **fields)


def validation_fields(caught) -> set[str]:
    return set(caught.value.message_dict)


# --- create ----------------------------------------------------------------------------------


def test_create_stores_only_an_argon2id_hash_and_returns_the_raw_key_once(org, owner):
    issued = create(org, actor=actor_for(owner))
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    parsed = key_format.parse(issued.raw_key)
    assert parsed is not None and parsed.key_id == key.key_id
    assert key.key_hash.startswith("$argon2id$")
    assert issued.raw_key not in key.key_hash
    assert key.hint == key_format.hint(issued.raw_key)
    assert not hasattr(key, "raw_key")


def test_create_defaults_to_the_inference_scope_all_models_and_no_expiry(org, owner):
    key = create(org, actor=actor_for(owner)).api_key
    assert key.scopes == ["inference"]
    assert key.allowed_models is None
    assert key.expires_at is None
    assert key.test_mode is False
    assert key.created_by == owner.user
    assert key.status == ApiKeyStatus.ACTIVE
    assert all(getattr(key, f) is None for f in ApiKey.LIMIT_FIELDS)


def test_create_cleans_scopes_and_models(org):
    key = create(
        org,
        name="  batch jobs  ",
        scopes=["usage:read", "inference", "inference"],
        models=[" demo-small ", "demo-small", "", "demo-large"],
        requests_per_minute="7",
        test_mode=True,
    ).api_key
    assert key.name == "batch jobs"
    assert key.scopes == ["inference", "usage:read"]
    assert key.allowed_models == ["demo-large", "demo-small"]
    assert key.requests_per_minute == 7
    assert key.test_mode is True


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"scopes": ["inference", "keys:delete"]}, "scopes"),
        ({"scopes": ["INFERENCE"]}, "scopes"),
        ({"models": [f"model-{i}" for i in range(101)]}, "models"),
        ({"models": ["m" * 201]}, "models"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_day": -1}, "requests_per_day"),
        ({"tokens_per_minute": "lots"}, "tokens_per_minute"),
        ({"tokens_per_day": 10**16}, "tokens_per_day"),
        ({"tokens_per_day": 1.5j}, "tokens_per_day"),
        ({"expires_at": "past"}, "expires_at"),
    ],
    ids=lambda value: str(value)[:40] if not isinstance(value, str) else value,
)
def test_create_refuses_bad_input_and_creates_nothing(org, fields, bad_field):
    if fields.get("expires_at") == "past":
        fields = {"expires_at": timezone.now() - timedelta(seconds=1)}
    fields.setdefault("name", "backend")
    with pytest.raises(ValidationError) as caught:
        api_key_create(organization=org, actor=SYSTEM, **fields)
    assert bad_field in validation_fields(caught)
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="key.").exists()


def test_create_accepts_an_expiry_in_the_future(org):
    expires = timezone.now() + timedelta(days=30)
    assert create(org, expires_at=expires).api_key.expires_at == expires


# --- the plan's cap on live keys -------------------------------------------------------------


def test_free_plan_allows_three_live_keys(org):
    assert org.plan.slug == "free" and org.plan.max_keys == 3
    for number in range(3):
        create(org, name=f"key {number}")
    with pytest.raises(ApplicationError) as caught:
        create(org, name="one too many")
    assert caught.value.code == KEY_LIMIT_REACHED
    assert caught.value.status == 403
    assert ApiKey.objects.filter(organization=org).count() == 3


def test_revoked_keys_do_not_count_against_the_cap(org):
    keys = [create(org, name=f"key {n}").api_key for n in range(3)]
    api_key_revoke(api_key=keys[0], actor=SYSTEM)
    create(org, name="replacement")
    assert ApiKey.objects.filter(organization=org).count() == 4


def test_expired_keys_do_not_count_against_the_cap(org, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    create(org, name="short-lived", expires_at=now + timedelta(minutes=5))
    create(org, name="a")
    create(org, name="b")
    with pytest.raises(ApplicationError):
        create(org, name="c")
    time_machine.move_to(now + timedelta(minutes=6), tick=False)
    create(org, name="c")


def test_the_cap_counts_only_this_organizations_keys(org, other_owner):
    for number in range(3):
        create(other_owner.organization, name=f"theirs {number}")
    create(org, name="ours")


def test_a_bigger_plan_allows_more_keys(org):
    org.plan = Plan.objects.get(slug="starter")
    org.save()
    for number in range(4):
        create(org, name=f"key {number}")


def test_rotation_needs_no_free_slot(org):
    keys = [create(org, name=f"key {n}").api_key for n in range(3)]
    issued = api_key_rotate(api_key=keys[0], actor=SYSTEM, grace=timedelta(hours=1))
    assert issued.api_key.rotated_from == keys[0]


# --- roles -----------------------------------------------------------------------------------


@pytest.fixture
def roles(org, member_factory):
    return {role: member_factory(organization=org, role=role) for role in Role.values}


def test_viewer_cannot_create_a_key(org, roles):
    with pytest.raises(ApplicationError) as caught:
        create(org, actor=actor_for(roles[Role.VIEWER]))
    assert (caught.value.code, caught.value.status) == (FORBIDDEN, 403)
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.MEMBER])
def test_writers_can_create_keys(org, roles, role):
    key = create(org, actor=actor_for(roles[role])).api_key
    assert key.created_by == roles[role].user


@pytest.mark.parametrize(
    "change",
    [
        lambda key, actor: api_key_revoke(api_key=key, actor=actor),
        lambda key, actor: api_key_rotate(api_key=key, actor=actor),
        lambda key, actor: api_key_update(api_key=key, actor=actor, name="renamed"),
    ],
    ids=["revoke", "rotate", "update"],
)
def test_viewer_cannot_change_any_key(org, roles, change):
    key = create(org, actor=actor_for(roles[Role.OWNER])).api_key
    with pytest.raises(ApplicationError) as caught:
        change(key, actor_for(roles[Role.VIEWER]))
    assert caught.value.code == FORBIDDEN
    key.refresh_from_db()
    assert key.status == ApiKeyStatus.ACTIVE and key.name == "backend"


def test_member_can_revoke_rotate_and_update_own_keys(org, roles):
    member = actor_for(roles[Role.MEMBER])
    first = create(org, actor=member).api_key
    api_key_update(api_key=first, actor=member, name="renamed")
    issued = api_key_rotate(api_key=first, actor=member, grace=timedelta(0))
    assert issued.api_key.created_by == roles[Role.MEMBER].user
    api_key_revoke(api_key=issued.api_key, actor=member)
    issued.api_key.refresh_from_db()
    assert issued.api_key.status == ApiKeyStatus.REVOKED


@pytest.mark.parametrize(
    "change",
    [
        lambda key, actor: api_key_revoke(api_key=key, actor=actor),
        lambda key, actor: api_key_rotate(api_key=key, actor=actor),
        lambda key, actor: api_key_update(api_key=key, actor=actor, scopes=["admin"]),
    ],
    ids=["revoke", "rotate", "update"],
)
def test_member_cannot_change_someone_elses_key(org, roles, change, member_factory):
    colleague = member_factory(organization=org, role=Role.MEMBER)
    for owner_of_key in (actor_for(roles[Role.OWNER]), actor_for(colleague), SYSTEM):
        key = create(org, actor=owner_of_key).api_key
        with pytest.raises(ApplicationError) as caught:
            change(key, actor_for(roles[Role.MEMBER]))
        assert (caught.value.code, caught.value.status) == (FORBIDDEN, 403)
        key.refresh_from_db()
        assert key.status == ApiKeyStatus.ACTIVE and key.scopes == ["inference"]
        assert not ApiKey.objects.filter(rotated_from=key).exists()
        api_key_revoke(api_key=key, actor=SYSTEM)  # make room under the free plan's cap


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owners_and_admins_can_change_any_key_of_the_organization(org, roles, role):
    admin = actor_for(roles[role])
    key = create(org, actor=actor_for(roles[Role.MEMBER])).api_key
    api_key_update(api_key=key, actor=admin, name="renamed by admin")
    issued = api_key_rotate(api_key=key, actor=admin, grace=timedelta(0))
    api_key_revoke(api_key=issued.api_key, actor=admin)
    issued.api_key.refresh_from_db()
    assert issued.api_key.status == ApiKeyStatus.REVOKED


def test_rotation_by_an_admin_makes_the_admin_the_successors_creator(org, roles):
    """An admin takes over a (departing) member's key by rotating it: the successor is bound
    to the admin's role, and the member no longer manages it."""
    member = actor_for(roles[Role.MEMBER])
    key = create(org, actor=member).api_key
    issued = api_key_rotate(api_key=key, actor=actor_for(roles[Role.ADMIN]), grace=timedelta(0))
    assert issued.api_key.created_by == roles[Role.ADMIN].user
    assert not issued.api_key.operator_issued
    with pytest.raises(ApplicationError) as refused:
        api_key_revoke(api_key=issued.api_key, actor=member)
    assert refused.value.code == FORBIDDEN


def test_rotation_by_the_system_keeps_the_human_owner_of_the_key(org, owner):
    key = create(org, actor=actor_for(owner)).api_key
    issued = api_key_rotate(api_key=key, actor=SYSTEM, grace=timedelta(0))
    assert issued.api_key.created_by == owner.user


# --- audit -----------------------------------------------------------------------------------


def assert_no_raw_key(event: AuditEvent, *raw_keys: str) -> None:
    dumped = repr([getattr(event, field.attname) for field in AuditEvent._meta.concrete_fields])
    for raw in raw_keys:
        assert raw not in dumped
        assert raw[21:64] not in dumped  # the secret part alone


def test_create_is_audited_with_actor_ip_and_key_id(org, owner):
    issued = create(org, actor=actor_for(owner, ip="198.51.100.23"), scopes=["usage:read"])
    event = AuditEvent.objects.get(action=AuditAction.KEY_CREATED)
    assert event.organization == org
    assert event.actor_user == owner.user
    assert event.actor_label == owner.user.email
    assert event.ip == "198.51.100.23"
    assert event.user_agent == "pytest"
    assert event.target_type == "api_key"
    assert event.target_id == issued.api_key.key_id
    assert event.metadata["scopes"] == ["usage:read"]
    assert event.created_at is not None
    assert_no_raw_key(event, issued.raw_key)


def test_update_is_audited_with_the_changes(org, owner):
    key = create(org).api_key
    api_key_update(
        api_key=key, actor=actor_for(owner, ip="198.51.100.24"), name="new name", tokens_per_day=9
    )
    event = AuditEvent.objects.get(action=AuditAction.KEY_UPDATED)
    assert (event.actor_user, event.ip, event.target_id) == (
        owner.user,
        "198.51.100.24",
        key.key_id,
    )
    assert event.metadata["changes"]["name"] == {"from": "backend", "to": "new name"}
    assert event.metadata["changes"]["tokens_per_day"] == {"from": None, "to": 9}


def test_update_without_a_change_records_nothing(org):
    key = create(org, name="same").api_key
    api_key_update(api_key=key, actor=SYSTEM, name="same", scopes=["inference"])
    assert not AuditEvent.objects.filter(action=AuditAction.KEY_UPDATED).exists()


@pytest.mark.parametrize(
    "changes",
    [{"key_hash": "x"}, {"organization": None}, {"test_mode": True}, {"revoked_at": None}],
    ids=lambda changes: next(iter(changes)),
)
def test_update_refuses_fields_that_cannot_change(org, changes):
    key = create(org).api_key
    with pytest.raises(ValidationError) as caught:
        api_key_update(api_key=key, actor=SYSTEM, **changes)
    assert set(changes) <= validation_fields(caught)


def test_update_refuses_an_expiry_in_the_past(org):
    key = create(org).api_key
    with pytest.raises(ValidationError) as caught:
        api_key_update(api_key=key, actor=SYSTEM, expires_at=timezone.now() - timedelta(minutes=1))
    assert "expires_at" in validation_fields(caught)


def test_revoke_is_audited_with_actor_ip_key_id_and_reason(org, owner):
    issued = create(org)
    api_key_revoke(
        api_key=issued.api_key, actor=actor_for(owner, ip="198.51.100.25"), reason=" leaked "
    )
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert key.revoked_at is not None
    assert key.revoked_reason == "leaked"
    event = AuditEvent.objects.get(action=AuditAction.KEY_REVOKED)
    assert (event.actor_user, event.ip, event.target_id) == (
        owner.user,
        "198.51.100.25",
        key.key_id,
    )
    assert event.metadata["reason"] == "leaked"
    assert_no_raw_key(event, issued.raw_key)


def test_revoking_twice_changes_nothing_and_records_one_event(org):
    key = create(org).api_key
    first = api_key_revoke(api_key=key, actor=SYSTEM, reason="first")
    second = api_key_revoke(api_key=key, actor=SYSTEM, reason="second")
    assert second.revoked_at == first.revoked_at
    assert ApiKey.objects.get(pk=key.pk).revoked_reason == "first"
    assert AuditEvent.objects.filter(action=AuditAction.KEY_REVOKED).count() == 1


def test_rotate_is_audited_for_the_old_key_and_the_new_key(org, owner):
    old = create(org)
    issued = api_key_rotate(
        api_key=old.api_key, actor=actor_for(owner, ip="198.51.100.26"), grace=timedelta(hours=2)
    )
    rotated = AuditEvent.objects.get(action=AuditAction.KEY_ROTATED)
    assert (rotated.actor_user, rotated.ip) == (owner.user, "198.51.100.26")
    assert rotated.target_id == old.api_key.key_id
    assert rotated.metadata["new_key_id"] == issued.api_key.key_id
    assert rotated.metadata["grace_seconds"] == 7200
    created = AuditEvent.objects.get(
        action=AuditAction.KEY_CREATED, target_id=issued.api_key.key_id
    )
    assert created.metadata["rotated_from"] == old.api_key.key_id
    for event in AuditEvent.objects.all():
        assert_no_raw_key(event, old.raw_key, issued.raw_key)


def test_a_key_pasted_into_a_revocation_reason_is_not_stored(org):
    victim = create(org)
    api_key_revoke(api_key=victim.api_key, actor=SYSTEM, reason=f"revoking {victim.raw_key}")
    reason = ApiKey.objects.get(pk=victim.api_key.pk).revoked_reason
    assert victim.raw_key[21:64] not in reason
    assert reason == "revoking [redacted key]"


def test_a_key_pasted_into_a_name_is_not_stored(org):
    first = create(org, name="first")
    second = create(org, name=f"replaces {first.raw_key}").api_key
    api_key_update(api_key=first.api_key, actor=SYSTEM, name=f"old {first.raw_key}")
    assert second.name == "replaces [redacted key]"
    assert ApiKey.objects.get(pk=first.api_key.pk).name == "old [redacted key]"


def test_audit_metadata_never_keeps_a_key_like_string(org):
    # Defence in depth: even a key pasted into a free-text reason is redacted.
    victim = create(org, name="victim")
    leaked = create(org, name="leaked")
    api_key_revoke(api_key=victim.api_key, actor=SYSTEM, reason=f"found {leaked.raw_key} in logs")
    event = AuditEvent.objects.get(action=AuditAction.KEY_REVOKED)
    assert_no_raw_key(event, leaked.raw_key)


def test_the_audit_log_keeps_a_key_name_that_only_looks_like_a_prefix(org):
    """One redaction for names and audit metadata: a name the key keeps is audited as is."""
    issued = create(org, name="sk_live_backend_2024")
    created = AuditEvent.objects.get(action=AuditAction.KEY_CREATED)
    assert issued.api_key.name == created.metadata["name"] == "sk_live_backend_2024"


# --- rotation rules --------------------------------------------------------------------------


def test_rotation_copies_the_settings_into_a_new_key(org):
    expires = timezone.now() + timedelta(days=10)
    old = create(
        org,
        name="copy me",
        scopes=["inference", "usage:read"],
        models=["demo-small"],
        requests_per_minute=1,
        requests_per_day=2,
        tokens_per_minute=3,
        tokens_per_day=4,
        expires_at=expires,
        test_mode=True,
    )
    issued = api_key_rotate(api_key=old.api_key, actor=SYSTEM, grace=timedelta(hours=1))
    new = issued.api_key
    assert issued.raw_key != old.raw_key and new.key_id != old.api_key.key_id
    assert issued.raw_key.startswith("sk_test_")
    for field in ("name", "scopes", "allowed_models", "test_mode", *ApiKey.LIMIT_FIELDS):
        assert getattr(new, field) == getattr(old.api_key, field), field
    assert new.expires_at == expires
    assert new.rotated_from == old.api_key


def test_rotation_default_grace_is_24_hours(org, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    old = create(org)
    issued = api_key_rotate(api_key=old.api_key, actor=SYSTEM)
    assert issued.replaced.expires_at == now + timedelta(hours=24)
    assert ApiKey.objects.get(pk=old.api_key.pk).expires_at == now + timedelta(hours=24)


def test_rotation_never_extends_an_earlier_expiry(org, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    old = create(org, expires_at=now + timedelta(hours=1))
    api_key_rotate(api_key=old.api_key, actor=SYSTEM, grace=timedelta(days=7))
    assert ApiKey.objects.get(pk=old.api_key.pk).expires_at == now + timedelta(hours=1)


def test_rotation_refuses_a_negative_grace(org):
    key = create(org).api_key
    with pytest.raises(ValidationError) as caught:
        api_key_rotate(api_key=key, actor=SYSTEM, grace=timedelta(seconds=-1))
    assert "grace" in validation_fields(caught)
    assert not ApiKey.objects.filter(rotated_from=key).exists()


def test_rotating_a_revoked_key_is_refused(org):
    key = create(org).api_key
    api_key_revoke(api_key=key, actor=SYSTEM)
    with pytest.raises(ApplicationError) as caught:
        api_key_rotate(api_key=key, actor=SYSTEM)
    assert (caught.value.code, caught.value.status) == (KEY_NOT_ACTIVE, 409)
    assert ApiKey.objects.count() == 1
    assert not AuditEvent.objects.filter(action=AuditAction.KEY_ROTATED).exists()


def test_rotating_an_expired_key_is_refused(org, time_machine):
    now = timezone.now()
    time_machine.move_to(now, tick=False)
    key = create(org, expires_at=now + timedelta(minutes=1)).api_key
    time_machine.move_to(now + timedelta(minutes=2), tick=False)
    with pytest.raises(ApplicationError) as caught:
        api_key_rotate(api_key=key, actor=SYSTEM)
    assert caught.value.code == KEY_NOT_ACTIVE


def test_rotating_the_same_key_twice_is_refused(org):
    key = create(org).api_key
    api_key_rotate(api_key=key, actor=SYSTEM, grace=timedelta(hours=1))
    with pytest.raises(ApplicationError) as caught:
        api_key_rotate(api_key=key, actor=SYSTEM, grace=timedelta(hours=1))
    assert (caught.value.code, caught.value.status) == (KEY_ALREADY_ROTATED, 409)
    assert ApiKey.objects.filter(rotated_from=key).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.KEY_ROTATED).count() == 1


def test_the_successor_of_a_rotated_key_can_be_rotated(org):
    first = create(org).api_key
    second = api_key_rotate(api_key=first, actor=SYSTEM, grace=timedelta(0)).api_key
    third = api_key_rotate(api_key=second, actor=SYSTEM, grace=timedelta(0)).api_key
    assert third.rotated_from == second
