"""What authorization needs to know about a key (`KeyContext`), loaded from its row in one SQL
query and cached as a plain dict (the shared cache holds `context_row`'s dict, each process the
`KeyContext` built from it by `context_from`)."""

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What authorization needs about a key, without touching the database."""

    pk: int
    key_id: str
    name: str
    organization_id: int
    organization_slug: str
    plan_slug: str
    scopes: frozenset[str]  # effective: the key's scopes ∩ its creator's current role
    models: tuple[str, ...] | None
    test_mode: bool
    limits: dict
    expires_at: float | None
    revoked_at: float | None
    created_by_id: int | None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def expires_at_datetime(self) -> datetime | None:
        return None if self.expires_at is None else datetime.fromtimestamp(self.expires_at, UTC)


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def context_row(key_id: str) -> tuple[dict, str | None]:
    """(cacheable context dict, argon2 hash) from one SQL query; {"missing": True} if none."""
    from keys.models import ApiKey
    from keys.selectors import api_key_effective_scopes, with_creator_role

    key = (
        with_creator_role(ApiKey.objects.select_related("organization__plan"))
        .filter(key_id=key_id)
        .only(
            "id",
            "key_id",
            "name",
            "key_hash",
            "scopes",
            "allowed_models",
            "test_mode",
            "expires_at",
            "revoked_at",
            "created_by_id",
            "operator_issued",
            *ApiKey.LIMIT_FIELDS,
            "organization__id",
            "organization__slug",
            "organization__plan",
            "organization__monthly_request_quota",
            "organization__monthly_token_quota",
        )
        .first()
    )
    if key is None:
        return {"missing": True}, None
    plan = key.organization.plan
    limits = key.effective_limits(plan, key.organization)
    data = {
        "pk": key.pk,
        "key_id": key.key_id,
        "name": key.name,
        "organization_id": key.organization_id,
        "organization_slug": key.organization.slug,
        "plan_slug": plan.slug,
        # What the key may do now: its scopes ∩ its creator's current role (keys/scopes.py),
        # computed here once per load so that the hot path only reads it.
        "scopes": sorted(api_key_effective_scopes(key)),
        "models": list(key.allowed_models) if key.allowed_models else None,
        "test_mode": key.test_mode,
        "limits": limits,
        "expires_at": _timestamp(key.expires_at),
        "revoked_at": _timestamp(key.revoked_at),
        "created_by_id": key.created_by_id,
    }
    return data, key.key_hash


def context_from(data: dict) -> KeyContext:
    return KeyContext(
        pk=data["pk"],
        key_id=data["key_id"],
        name=data["name"],
        organization_id=data["organization_id"],
        organization_slug=data["organization_slug"],
        plan_slug=data["plan_slug"],
        scopes=frozenset(data["scopes"]),
        models=tuple(data["models"]) if data["models"] else None,
        test_mode=data["test_mode"],
        limits=data["limits"],
        expires_at=data["expires_at"],
        revoked_at=data["revoked_at"],
        created_by_id=data["created_by_id"],
    )
