"""Caches follow the keys: a change is logged for every process (keys/changes.py) and dropped
from this process's caches at once and again at commit."""

from django.db import transaction

from accounts.models import Organization
from keys import changes, verification
from keys.models import ApiKey


def keys_changed(*key_ids: str) -> None:
    """These keys changed (in the caller's transaction): every cache, in every process, drops
    them."""
    if not key_ids:
        return
    changes.record(*key_ids)  # every other process, within API_KEY_CHANGE_POLL_SECONDS
    verification.invalidate(*key_ids)  # this process, right now
    transaction.on_commit(lambda: verification.invalidate(*key_ids))


def api_keys_invalidate(
    *,
    organization: Organization | None = None,
    plan=None,
    organization_id: int | None = None,
    created_by_id: int | None = None,
) -> None:
    """After a plan change or a plan edit (the keys re-read their limits), or a change of the
    membership (in `organization_id`) or account of `created_by_id` (their keys re-read their
    effective scopes)."""
    keys = ApiKey.objects.all()
    if organization is not None:
        keys = keys.filter(organization=organization)
    if organization_id is not None:
        keys = keys.filter(organization_id=organization_id)
    if plan is not None:
        keys = keys.filter(organization__plan=plan)
    if created_by_id is not None:
        keys = keys.filter(created_by_id=created_by_id)
    key_ids = list(keys.values_list("key_id", flat=True))
    keys_changed(*key_ids)
