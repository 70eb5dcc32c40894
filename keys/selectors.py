from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from accounts.models import Membership, Organization
from infra.errors import INVALID_REQUEST, ApplicationError
from keys.format import KEY_ID_PATTERN
from keys.models import ApiKey, ApiKeyStatus
from keys.scopes import effective_scopes

KEY_NOT_FOUND = "key_not_found"


def api_key_list(*, organization: Organization, status: str | None = None) -> QuerySet[ApiKey]:
    keys = with_creator_role(
        ApiKey.objects.filter(organization=organization).select_related(
            "created_by", "rotated_from"
        )
    )
    now = timezone.now()
    if status == ApiKeyStatus.REVOKED:
        keys = keys.filter(revoked_at__isnull=False)
    elif status == ApiKeyStatus.EXPIRED:
        keys = keys.filter(revoked_at__isnull=True, expires_at__lte=now)
    elif status == ApiKeyStatus.ACTIVE:
        keys = keys.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )
    elif status:
        raise ApplicationError(
            INVALID_REQUEST,
            f"Unknown status {status!r}; one of {', '.join(ApiKeyStatus.values)}.",
            status=400,
            param="status",
        )
    return keys


def api_key_get(*, organization: Organization, ident: str | int) -> ApiKey:
    """One key of `organization` by database id or public key id; another org's key is 404."""
    ident = str(ident).strip()
    keys = api_key_list(organization=organization)
    if KEY_ID_PATTERN.fullmatch(ident):
        key = keys.filter(key_id=ident).first()
    elif ident.isascii() and ident.isdigit() and len(ident) < 19:  # not "²": int() refuses it
        key = keys.filter(pk=int(ident)).first()
    else:
        key = None
    if key is None:
        raise ApplicationError(
            KEY_NOT_FOUND, f"No API key {ident[:40]!r} in this organization.", status=404
        )
    return key


def api_key_get_any(*, key_id: str) -> ApiKey:
    """For operators (management commands): a key of any organization by its public id."""
    key = ApiKey.objects.select_related("organization").filter(key_id=key_id.strip()).first()
    if key is None:
        raise ApplicationError(KEY_NOT_FOUND, f"No API key with id {key_id[:40]!r}.", status=404)
    return key


def with_creator_role(keys: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
    """`keys` annotated with `creator_role`: their creator's current role in their organization
    (None when the creator left it or their account was deactivated), in the same query."""
    return keys.annotate(
        creator_role=Subquery(
            Membership.objects.filter(
                user_id=OuterRef("created_by_id"),
                organization_id=OuterRef("organization_id"),
                user__is_active=True,
            ).values("role")[:1]
        )
    )


def api_key_effective_scopes(api_key: ApiKey) -> frozenset[str]:
    """What `api_key` may do now: its scopes ∩ its creator's current role (keys/scopes.py).
    Uses the `creator_role` that api_key_list annotates, else reads the membership."""
    if api_key.operator_issued:
        return frozenset(api_key.scopes)
    if hasattr(api_key, "creator_role"):
        role = api_key.creator_role
    else:
        role = (
            Membership.objects.filter(
                user_id=api_key.created_by_id,
                organization_id=api_key.organization_id,
                user__is_active=True,
            )
            .values_list("role", flat=True)
            .first()
        )
    return effective_scopes(api_key.scopes, operator_issued=False, creator_role=role)
