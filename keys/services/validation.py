"""Validation of key fields: names, scopes, model lists, limit overrides, expiry."""

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import Plan
from infra.logs import redact_stored
from keys.models import DEFAULT_SCOPES, ApiKey, Scope

MAX_MODELS = 100
MAX_NAME = 100
MAX_LIMIT = 10**15
# A key's limit override may only tighten its plan's (ApiKey.effective_limits takes the lower).
LIMIT_ABOVE_PLAN = "At most {limit:,}, the {plan} plan's {what}; ask for a bigger plan."


def clean_name(name: str) -> str:
    name = redact_stored((name or "").strip())
    if not name:
        raise ValidationError({"name": "A key needs a name, e.g. 'production backend'."})
    if len(name) > MAX_NAME:
        raise ValidationError({"name": f"At most {MAX_NAME} characters."})
    return name


def clean_scopes(scopes: list[str] | None) -> list[str]:
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


def clean_models(models: list[str] | None) -> list[str] | None:
    if not models:
        return None
    cleaned = sorted({str(m).strip() for m in models if str(m).strip()})
    if len(cleaned) > MAX_MODELS:
        raise ValidationError({"models": f"At most {MAX_MODELS} models."})
    if any(len(m) > 200 for m in cleaned):
        raise ValidationError({"models": "A model name has at most 200 characters."})
    return cleaned or None


def clean_limit(field: str, value, plan: Plan) -> int | None:
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


def clean_limits(plan: Plan, **values) -> dict[str, int | None]:
    """Every given limit override cleaned against `plan`; one ValidationError naming each bad
    field."""
    cleaned, errors = {}, {}
    for field, value in values.items():
        try:
            cleaned[field] = clean_limit(field, value, plan)
        except ValidationError as error:
            errors.update(error.message_dict)
    if errors:
        raise ValidationError(errors)
    return cleaned


def clean_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    return expires_at


UPDATABLE = ("name", "scopes", "models", *ApiKey.LIMIT_FIELDS, "expires_at")
_CLEANERS = {
    "name": ("name", clean_name),
    "scopes": ("scopes", clean_scopes),
    "models": ("allowed_models", clean_models),
    "expires_at": ("expires_at", clean_expiry),
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
                cleaned[field] = (field, clean_limit(field, value, plan))
        except ValidationError as error:
            errors.update(error.message_dict)
    if errors:
        raise ValidationError(errors)
    return cleaned
