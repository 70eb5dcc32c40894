"""Writes on API keys: create, update, revoke, rotate, mark used. Each is audited."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Organization
from infra.errors import ApplicationError
from infra.logs import redact_stored
from keys import format as key_format
from keys import verification
from keys.hashing import hash_key
from keys.models import ApiKey
from keys.services.grants import Grantor, grantor_of, require_manage
from keys.services.invalidation import keys_changed
from keys.services.validation import (
    api_key_clean_changes,
    clean_expiry,
    clean_limits,
    clean_models,
    clean_name,
    clean_scopes,
)

logger = logging.getLogger(__name__)

KEY_LIMIT_REACHED = "key_limit_reached"
KEY_NOT_ACTIVE = "key_not_active"
KEY_ALREADY_ROTATED = "key_already_rotated"


@dataclass(frozen=True)
class IssuedKey:
    """A key just made. `raw_key` exists only here: show it once, never store or log it."""

    api_key: ApiKey
    raw_key: str
    replaced: ApiKey | None = None  # after a rotation: the old key, with its new expiry


def _live_keys(organization: Organization):
    now = timezone.now()
    return ApiKey.objects.filter(organization=organization, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def _audit_key(action: str, actor: Actor, api_key: ApiKey, metadata: dict) -> None:
    audit_record(
        action=action,
        actor=actor,
        organization=api_key.organization,
        target_type="api_key",
        target_id=api_key.key_id,
        metadata=metadata,
    )


# --- services --------------------------------------------------------------------------------


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    actor: Actor,
    scopes: list[str] | None = None,
    models: list[str] | None = None,
    requests_per_minute: int | None = None,
    requests_per_day: int | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    expires_at: datetime | None = None,
    test_mode: bool = False,
    rotated_from: ApiKey | None = None,
    check_quota: bool = True,
    grantor: Grantor | None = None,
) -> IssuedKey:
    """Issue a key. The plan caps live keys; the organization row is locked while counting.

    The actor must hold every scope it grants (keys/services/grants.py), and the key is bound
    to the actor's person (or is operator-issued): its effective scopes follow that person's
    role. A rotation passes `grantor` (the rotation decides whom the successor is bound to).

    Limit overrides may only tighten the plan's limits (checked against the plan read under
    the lock). A rotation's successor keeps its predecessor's overrides as they are: one set
    under a bigger plan is capped by the current plan anyway (ApiKey.effective_limits).
    """
    require_manage(actor, None)
    scopes = clean_scopes(scopes)
    grantor = grantor or grantor_of(actor, organization)
    grantor.require(scopes)
    fields = {
        "name": clean_name(name),
        "scopes": scopes,
        "allowed_models": clean_models(models),
        "expires_at": clean_expiry(expires_at) if rotated_from is None else expires_at,
        "test_mode": bool(test_mode),
    }
    organization = (
        Organization.objects.select_for_update().select_related("plan").get(pk=organization.pk)
    )
    limits = {
        "requests_per_minute": requests_per_minute,
        "requests_per_day": requests_per_day,
        "tokens_per_minute": tokens_per_minute,
        "tokens_per_day": tokens_per_day,
    }
    fields |= limits if rotated_from is not None else clean_limits(organization.plan, **limits)
    cap = organization.plan.max_keys
    if check_quota and cap is not None and _live_keys(organization).count() >= cap:
        raise ApplicationError(
            KEY_LIMIT_REACHED,
            f"The {organization.plan.name} plan allows {cap} live API keys. "
            "Revoke a key or upgrade the plan.",
            status=403,
        )
    for _ in range(3):
        parsed = key_format.generate(test_mode=fields["test_mode"])
        api_key = ApiKey(
            organization=organization,
            key_id=parsed.key_id,
            key_hash=hash_key(parsed.raw),
            hint=key_format.hint(parsed.raw),
            created_by_id=grantor.created_by_id,
            operator_issued=grantor.operator_issued,
            rotated_from=rotated_from,
            **fields,
        )
        try:
            with transaction.atomic():
                api_key.save()
            break
        except IntegrityError:  # a 71-bit key id collided: draw again
            continue
    else:  # pragma: no cover
        raise ApplicationError("key_id_exhausted", "Could not allocate a key id.", status=500)
    _audit_key(
        AuditAction.KEY_CREATED,
        actor,
        api_key,
        {
            "name": api_key.name,
            "scopes": api_key.scopes,
            "models": api_key.allowed_models,
            "test_mode": api_key.test_mode,
            "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
            "rotated_from": rotated_from.key_id if rotated_from else None,
        },
    )
    raw = parsed.raw
    transaction.on_commit(lambda: verification.prime(raw))
    return IssuedKey(api_key=api_key, raw_key=raw)


@transaction.atomic
def api_key_update(*, api_key: ApiKey, actor: Actor, **changes) -> ApiKey:
    """Change name, scopes, models, limit overrides or expiry. Only the given fields change.

    A limit override may only tighten the organization's current plan. The key must end up
    with scopes the actor holds: a key with more than the actor holds can be narrowed (or
    revoked) by it, never widened or otherwise changed."""
    require_manage(actor, api_key)
    organization = Organization.objects.select_related("plan").get(pk=api_key.organization_id)
    cleaned = api_key_clean_changes(plan=organization.plan, **changes)
    scopes = cleaned["scopes"][1] if "scopes" in cleaned else api_key.scopes
    grantor_of(actor, organization).require(scopes)
    diff = {}
    for field, (attr, new) in cleaned.items():
        old = getattr(api_key, attr)
        if old != new:
            diff[field] = {
                "from": old.isoformat() if isinstance(old, datetime) else old,
                "to": new.isoformat() if isinstance(new, datetime) else new,
            }
            setattr(api_key, attr, new)
    if not diff:
        return api_key
    api_key.save()
    _audit_key(
        AuditAction.KEY_UPDATED,
        actor,
        api_key,
        {"changes": diff},
    )
    keys_changed(api_key.key_id)
    return api_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Actor, reason: str = "") -> ApiKey:
    """Revoke now, on every instance (this one at once, others within API_KEY_LOCAL_TTL).

    Revoking a revoked key changes nothing and records nothing.
    """
    require_manage(actor, api_key)
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.revoked_reason = redact_stored((reason or "").strip())[:500]
    api_key.save(update_fields=["revoked_at", "revoked_reason"])
    _audit_key(
        AuditAction.KEY_REVOKED,
        actor,
        api_key,
        {"name": api_key.name, "reason": api_key.revoked_reason},
    )
    keys_changed(api_key.key_id)
    return api_key


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
    old = ApiKey.objects.select_for_update().select_related("organization").get(pk=api_key.pk)
    now = timezone.now()
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise ApplicationError(
            KEY_NOT_ACTIVE, "Only an active key can be rotated; create a new key.", status=409
        )
    if ApiKey.objects.filter(rotated_from=old).exists():
        raise ApplicationError(
            KEY_ALREADY_ROTATED, "This key was already rotated; rotate its successor.", status=409
        )
    grantor = grantor_of(actor, old.organization)
    grantor.require(old.scopes)
    if actor.system:
        grantor = Grantor(
            held=grantor.held,
            created_by_id=old.created_by_id,
            operator_issued=old.operator_issued,
        )
    issued = api_key_create(
        organization=old.organization,
        name=old.name,
        actor=actor,
        scopes=old.scopes,
        models=old.allowed_models,
        requests_per_minute=old.requests_per_minute,
        requests_per_day=old.requests_per_day,
        tokens_per_minute=old.tokens_per_minute,
        tokens_per_day=old.tokens_per_day,
        expires_at=old.expires_at,
        test_mode=old.test_mode,
        rotated_from=old,
        check_quota=False,  # the old key expires: rotation never needs a free slot
        grantor=grantor,
    )
    ends = now + grace
    if old.expires_at is None or old.expires_at > ends:
        old.expires_at = ends
        old.save(update_fields=["expires_at"])
    _audit_key(
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


def api_key_mark_used(*, pk: int, at: datetime, ip: str | None) -> None:
    """Record the last use. Called off the request path, at most once a minute per key."""
    ApiKey.objects.filter(pk=pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=at)
    ).update(last_used_at=at, last_used_ip=ip)
