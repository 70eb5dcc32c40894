"""Writes on API keys: create, update, revoke, rotate, mark used. Each is audited."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.actors import Actor
from accounts.audit import audit_record
from accounts.models import AuditAction, Organization
from aibaas.errors import ApplicationError
from billing.models import Plan
from keys import format as key_format
from keys import verification
from keys.hashing import hash_key
from keys.models import DEFAULT_SCOPES, ApiKey, Scope

logger = logging.getLogger(__name__)

KEY_LIMIT_REACHED = "key_limit_reached"
KEY_NOT_ACTIVE = "key_not_active"
KEY_ALREADY_ROTATED = "key_already_rotated"
FORBIDDEN = "forbidden"

MAX_MODELS = 100
MAX_NAME = 100
MAX_LIMIT = 10**15
# A key's limit override may only tighten its plan's (ApiKey.effective_limits takes the lower).
LIMIT_ABOVE_PLAN = "At most {limit:,}, the {plan} plan's {what}; ask for a bigger plan."


@dataclass(frozen=True)
class IssuedKey:
    """A key just made. `raw_key` exists only here: show it once, never store or log it."""

    api_key: ApiKey
    raw_key: str
    replaced: ApiKey | None = None  # after a rotation: the old key, with its new expiry


# --- validation ------------------------------------------------------------------------------


def _clean_name(name: str) -> str:
    name = key_format.redact((name or "").strip())
    if not name:
        raise ValidationError({"name": "A key needs a name, e.g. 'production backend'."})
    if len(name) > MAX_NAME:
        raise ValidationError({"name": f"At most {MAX_NAME} characters."})
    return name


def _clean_scopes(scopes: list[str] | None) -> list[str]:
    if scopes is None:
        return list(DEFAULT_SCOPES)
    cleaned = sorted({str(s).strip() for s in scopes if str(s).strip()})
    unknown = [s for s in cleaned if s not in Scope.values]
    if unknown:
        raise ValidationError(
            {"scopes": f"Unknown scope(s) {', '.join(unknown)}; known: {', '.join(Scope.values)}."}
        )
    if not cleaned:
        raise ValidationError({"scopes": "A key needs at least one scope."})
    return cleaned


def _clean_models(models: list[str] | None) -> list[str] | None:
    if not models:
        return None
    cleaned = sorted({str(m).strip() for m in models if str(m).strip()})
    if len(cleaned) > MAX_MODELS:
        raise ValidationError({"models": f"At most {MAX_MODELS} models."})
    if any(len(m) > 200 for m in cleaned):
        raise ValidationError({"models": "A model name has at most 200 characters."})
    return cleaned or None


def _clean_limit(field: str, value, plan: Plan) -> int | None:
    """A per-key limit override: a whole number that only tightens `plan`'s limit (a plan's
    None is unlimited, and then any override applies as it is)."""
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError({field: "A whole number, or empty for the plan's limit."}) from None
    if number < 1 or number > MAX_LIMIT:
        raise ValidationError({field: "Between 1 and 10^15, or empty for the plan's limit."})
    plan_limit = getattr(plan, field)
    if plan_limit is not None and number > plan_limit:
        raise ValidationError(
            {
                field: LIMIT_ABOVE_PLAN.format(
                    limit=plan_limit,
                    plan=plan.name,
                    what=Plan._meta.get_field(field).verbose_name,
                )
            }
        )
    return number


def _clean_limits(plan: Plan, **values) -> dict[str, int | None]:
    """Every given limit override cleaned against `plan`; one ValidationError naming each bad
    field."""
    cleaned, errors = {}, {}
    for field, value in values.items():
        try:
            cleaned[field] = _clean_limit(field, value, plan)
        except ValidationError as error:
            errors.update(error.message_dict)
    if errors:
        raise ValidationError(errors)
    return cleaned


def _clean_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    return expires_at


def _live_keys(organization: Organization):
    now = timezone.now()
    return ApiKey.objects.filter(organization=organization, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def _require_manage(actor: Actor, api_key: ApiKey | None) -> None:
    """Owners/admins (and admin-scoped keys) manage every key; members their own; viewers none."""
    if actor.is_admin:
        return
    if not actor.can_write:
        raise ApplicationError(FORBIDDEN, "Viewers cannot change API keys.", status=403)
    if api_key is not None and (actor.user is None or api_key.created_by_id != actor.user.pk):
        raise ApplicationError(
            FORBIDDEN, "Members can only change the keys they created.", status=403
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


def _on_commit_invalidate(*key_ids: str) -> None:
    verification.invalidate(*key_ids)  # this process, right now
    transaction.on_commit(lambda: verification.invalidate(*key_ids))


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
) -> IssuedKey:
    """Issue a key. The plan caps live keys; the organization row is locked while counting.

    Limit overrides may only tighten the plan's limits (checked against the plan read under
    the lock). A rotation's successor keeps its predecessor's overrides as they are: one set
    under a bigger plan is capped by the current plan anyway (ApiKey.effective_limits).
    """
    _require_manage(actor, None)
    fields = {
        "name": _clean_name(name),
        "scopes": _clean_scopes(scopes),
        "allowed_models": _clean_models(models),
        "expires_at": _clean_expiry(expires_at) if rotated_from is None else expires_at,
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
    fields |= limits if rotated_from is not None else _clean_limits(organization.plan, **limits)
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
            created_by=actor.user,
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


UPDATABLE = ("name", "scopes", "models", *ApiKey.LIMIT_FIELDS, "expires_at")
_CLEANERS = {
    "name": ("name", _clean_name),
    "scopes": ("scopes", _clean_scopes),
    "models": ("allowed_models", _clean_models),
    "expires_at": ("expires_at", _clean_expiry),
}


def api_key_clean_changes(*, plan: Plan, **changes) -> dict[str, tuple[str, Any]]:
    """Each change of an update of a key of an organization on `plan` cleaned, as
    {field: (model attribute, value)}.

    Raises a ValidationError naming every bad field. Forms that edit keys (the admin) call it
    from their clean() so that a bad value is a form error, not a failed save.
    """
    errors = {f: ["This field cannot be changed."] for f in sorted(set(changes) - set(UPDATABLE))}
    cleaned = {}
    for field, value in changes.items():
        if field in errors:
            continue
        try:
            if field in _CLEANERS:
                attr, clean = _CLEANERS[field]
                cleaned[field] = (attr, clean(value))
            else:
                cleaned[field] = (field, _clean_limit(field, value, plan))
        except ValidationError as error:
            errors.update(error.message_dict)
    if errors:
        raise ValidationError(errors)
    return cleaned


@transaction.atomic
def api_key_update(*, api_key: ApiKey, actor: Actor, **changes) -> ApiKey:
    """Change name, scopes, models, limit overrides or expiry. Only the given fields change.

    A limit override may only tighten the organization's current plan."""
    _require_manage(actor, api_key)
    plan = Plan.objects.get(organizations__id=api_key.organization_id)
    diff = {}
    for field, (attr, new) in api_key_clean_changes(plan=plan, **changes).items():
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
    _on_commit_invalidate(api_key.key_id)
    return api_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Actor, reason: str = "") -> ApiKey:
    """Revoke now, on every instance (this one at once, others within API_KEY_LOCAL_TTL).

    Revoking a revoked key changes nothing and records nothing.
    """
    _require_manage(actor, api_key)
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.revoked_reason = key_format.redact((reason or "").strip())[:500]
    api_key.save(update_fields=["revoked_at", "revoked_reason"])
    _audit_key(
        AuditAction.KEY_REVOKED,
        actor,
        api_key,
        {"name": api_key.name, "reason": api_key.revoked_reason},
    )
    _on_commit_invalidate(api_key.key_id)
    return api_key


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, actor: Actor, grace: timedelta | None = None) -> IssuedKey:
    """A new key with the same settings; the old one keeps working for `grace`, then expires.

    `grace=timedelta(0)` ends the old key at once.
    """
    _require_manage(actor, api_key)
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
    )
    if old.created_by_id is not None and issued.api_key.created_by_id != old.created_by_id:
        # The key keeps its owner whoever rotates it (an admin, an operator, a key), so the
        # member who created it can still manage its successor.
        issued.api_key.created_by_id = old.created_by_id
        issued.api_key.save(update_fields=["created_by"])
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
    _on_commit_invalidate(old.key_id)
    return IssuedKey(api_key=issued.api_key, raw_key=issued.raw_key, replaced=old)


def api_key_mark_used(*, pk: int, at: datetime, ip: str | None) -> None:
    """Record the last use. Called off the request path, at most once a minute per key."""
    ApiKey.objects.filter(pk=pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=at)
    ).update(last_used_at=at, last_used_ip=ip)


def api_keys_invalidate(*, organization: Organization | None = None, plan=None) -> None:
    """After a plan change or a plan edit: the affected keys re-read their limits."""
    keys = ApiKey.objects.all()
    if organization is not None:
        keys = keys.filter(organization=organization)
    if plan is not None:
        keys = keys.filter(organization__plan=plan)
    key_ids = list(keys.values_list("key_id", flat=True))
    _on_commit_invalidate(*key_ids)
