from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Organization
from aibaas.errors import ApplicationError
from keys.format import KEY_ID_PATTERN
from keys.models import ApiKey, ApiKeyStatus

KEY_NOT_FOUND = "key_not_found"


def api_key_list(*, organization: Organization, status: str | None = None) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.filter(organization=organization).select_related(
        "created_by", "rotated_from"
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
            "invalid_request_error",
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
