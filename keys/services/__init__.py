"""Writes on API keys (create, update, revoke, rotate (rotation.py), mark used), each audited,
and the rules they share: validation (validation.py), who may grant what (grants.py) and how
every process forgets a changed key (invalidation.py)."""

from keys.services.api_keys import (
    KEY_LIMIT_REACHED,
    IssuedKey,
    api_key_create,
    api_key_mark_used,
    api_key_revoke,
    api_key_update,
)
from keys.services.grants import FORBIDDEN, SCOPE_NOT_HELD, Grantor, grantor_of
from keys.services.invalidation import api_keys_invalidate
from keys.services.rotation import KEY_ALREADY_ROTATED, KEY_NOT_ACTIVE, api_key_rotate
from keys.services.validation import LIMIT_ABOVE_PLAN, api_key_clean_changes

__all__ = [
    "FORBIDDEN",
    "KEY_ALREADY_ROTATED",
    "KEY_LIMIT_REACHED",
    "KEY_NOT_ACTIVE",
    "LIMIT_ABOVE_PLAN",
    "SCOPE_NOT_HELD",
    "Grantor",
    "IssuedKey",
    "api_key_clean_changes",
    "api_key_create",
    "api_key_mark_used",
    "api_key_revoke",
    "api_key_rotate",
    "api_key_update",
    "api_keys_invalidate",
    "grantor_of",
]
