"""Rotation: a successor with the same settings, the old key kept alive for a grace period."""

from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.actors import Actor
from accounts.models import AuditAction
from infra.errors import ApplicationError
from keys.models import ApiKey
from keys.services.api_keys import IssuedKey, api_key_create, audit_key
from keys.services.grants import Grantor, grantor_of, require_manage
from keys.services.invalidation import keys_changed

KEY_NOT_ACTIVE = "key_not_active"
KEY_ALREADY_ROTATED = "key_already_rotated"


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, actor: Actor, grace: timedelta | None = None) -> IssuedKey:
    """A new key with the same settings; the old one keeps working for `grace`, then expires.

    `grace=timedelta(0)` ends the old key at once. The actor must hold every scope of the key.
    The successor is bound to whoever rotates it (a person, or a key's person: an admin takes
    over a departed member's key by rotating it); an operator's rotation keeps the binding.
    """
    require_manage(actor, api_key)
    grace = timedelta(seconds=settings.API_KEY_DEFAULT_ROTATION_GRACE) if grace is None else grace
    if grace < timedelta(0):
        raise ValidationError({"grace": "The grace period cannot be negative."})
    now = timezone.now()
    old = _rotatable(api_key, now)
    issued = api_key_create(
        organization=old.organization,
        name=old.name,
        actor=actor,
        scopes=old.scopes,
        models=old.allowed_models,
        **{field: getattr(old, field) for field in ApiKey.LIMIT_FIELDS},
        expires_at=old.expires_at,
        test_mode=old.test_mode,
        rotated_from=old,
        check_quota=False,  # the old key expires: rotation never needs a free slot
        grantor=_successor_grantor(actor, old),
    )
    ends = now + grace
    if old.expires_at is None or old.expires_at > ends:
        old.expires_at = ends
        old.save(update_fields=["expires_at"])
    audit_key(
        AuditAction.KEY_ROTATED,
        actor,
        old,
        {
            "new_key_id": issued.api_key.key_id,
            "grace_seconds": int(grace.total_seconds()),
            "old_key_expires_at": old.expires_at.isoformat(),
        },
    )
    keys_changed(old.key_id)
    return IssuedKey(api_key=issued.api_key, raw_key=issued.raw_key, replaced=old)


def _rotatable(api_key: ApiKey, now: datetime) -> ApiKey:
    """The key locked for its rotation: active, and not rotated already (409 otherwise)."""
    old = ApiKey.objects.select_for_update().select_related("organization").get(pk=api_key.pk)
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise ApplicationError(
            KEY_NOT_ACTIVE, "Only an active key can be rotated; create a new key.", status=409
        )
    if ApiKey.objects.filter(rotated_from=old).exists():
        raise ApplicationError(
            KEY_ALREADY_ROTATED, "This key was already rotated; rotate its successor.", status=409
        )
    return old


def _successor_grantor(actor: Actor, old: ApiKey) -> Grantor:
    """Who the successor is bound to: the actor, who must hold every scope of the key; an
    operator's rotation keeps the old key's binding."""
    grantor = grantor_of(actor, old.organization)
    grantor.require(old.scopes)
    if actor.system:
        grantor = Grantor(
            held=grantor.held,
            created_by_id=old.created_by_id,
            operator_issued=old.operator_issued,
        )
    return grantor
