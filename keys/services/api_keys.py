"""Writes on API keys: create, update, revoke, mark used. Each is audited (rotation:
rotation.py)."""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record, key_label
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


def audit_key(action: str, actor: Actor, api_key: ApiKey, metadata: dict) -> None:
    audit_record(
        action=action,
        actor=actor,
        organization=api_key.organization,
        target_type="api_key",
        target_id=api_key.key_id,
        target_label=key_label(api_key.name, api_key.key_id),
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
    if check_quota:
        _require_free_slot(organization)
    api_key, raw = _insert(organization, fields, grantor, rotated_from)
    audit_key(AuditAction.KEY_CREATED, actor, api_key, _created(api_key))
    transaction.on_commit(lambda: verification.prime(raw))
    return IssuedKey(api_key=api_key, raw_key=raw)


def _created(api_key: ApiKey) -> dict:
    """The audit record's metadata of a key issued."""
    return {
        "name": api_key.name,
        "scopes": api_key.scopes,
        "models": api_key.allowed_models,
        "test_mode": api_key.test_mode,
        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
        "rotated_from": api_key.rotated_from.key_id if api_key.rotated_from else None,
    }


def _require_free_slot(organization: Organization) -> None:
    """The plan's cap on live keys (the organization row is locked by the caller)."""
    cap = organization.plan.max_keys
    if cap is not None and _live_keys(organization).count() >= cap:
        raise ApplicationError(
            KEY_LIMIT_REACHED,
            f"The {organization.plan.name} plan allows {cap} live API keys. "
            "Revoke a key or upgrade the plan.",
            status=403,
        )


def _insert(
    organization: Organization, fields: dict, grantor: Grantor, rotated_from: ApiKey | None
) -> tuple[ApiKey, str]:
    """The new row and its raw key (a key id that collides is drawn again)."""
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
            return api_key, parsed.raw
        except IntegrityError:  # a 71-bit key id collided: draw again
            continue
    raise ApplicationError(  # pragma: no cover
        "key_id_exhausted", "Could not allocate a key id.", status=500
    )


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
    audit_key(
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
    audit_key(
        AuditAction.KEY_REVOKED,
        actor,
        api_key,
        {"name": api_key.name, "reason": api_key.revoked_reason},
    )
    keys_changed(api_key.key_id)
    return api_key


def api_key_mark_used(*, pk: int, at: datetime, ip: str | None) -> None:
    """Record the last use. Called off the request path, at most once a minute per key."""
    ApiKey.objects.filter(pk=pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=at)
    ).update(last_used_at=at, last_used_ip=ip)
