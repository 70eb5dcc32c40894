"""Key verification: raw key -> KeyContext, with no argon2 and no SQL on the hot path.

Layers, fastest first: the format and checksum (keys/format.py: no I/O); a per-process entry
API_KEY_LOCAL_TTL long (a warm check is one HMAC); the shared cache, one round trip for a key's
context `ak:{<key id>}:c` and HMAC verifier `ak:{<key id>}:v` (one Cluster slot); the database
row and one argon2id run only when the verifier is missing (one at a time per key id, at most
API_KEY_MAX_FAILED_VERIFICATIONS wrong secrets per key id and minute).
Invariant: a change (revoke, rotate, edit, plan, the creator's membership) drops the cached
context here at once and in every other process within API_KEY_CHANGE_POLL_SECONDS
(keys/changes.py), whatever the cache. Figures and reasoning: docs/key-verification.md.
"""

import asyncio
import threading
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connections

from infra.errors import ApplicationError
from keys import format as key_format
from keys.context import KeyContext, context_from, context_row
from keys.hashing import (
    VerificationBusy,
    argon2_slot,
    check_key_hash,
    verifier,
    verifier_matches,
)

INVALID_API_KEY = "invalid_api_key"
KEY_REVOKED = "key_revoked"
KEY_EXPIRED = "key_expired"
VERIFICATION_BUSY = "verification_busy"

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Send it in the Authorization header "
    "(Authorization: Bearer sk_live_...) or in the X-API-Key header."
)
INVALID_KEY_MESSAGE = (
    "Incorrect API key provided. Keys look like sk_live_... or sk_test_...; "
    "manage yours at /dashboard/keys/."
)
REVOKED_KEY_MESSAGE = "This API key has been revoked. Create a new one at /dashboard/keys/."
EXPIRED_KEY_MESSAGE = "This API key has expired. Create or rotate a key at /dashboard/keys/."
BUSY_MESSAGE = "Key verification is busy; retry in a moment."
KEY_IN_QUERY = "key_in_query"
KEY_IN_QUERY_MESSAGE = (
    "API keys are never accepted in the URL (URLs end up in logs and browser history). Send the "
    "key in the Authorization header (Authorization: Bearer sk_live_...) or in the X-API-Key "
    "header, and rotate a key you have sent in a URL."
)

MISSING_TTL = 60
FAILURE_WINDOW = 60


class KeyRejected(ApplicationError):
    """A key refused: 401 (invalid, revoked, expired) or 503 (verification busy)."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(code, message, status=status)


def context_cache_key(key_id: str) -> str:
    return f"ak:{{{key_id}}}:c"


def verifier_cache_key(key_id: str) -> str:
    return f"ak:{{{key_id}}}:v"


def failures_cache_key(key_id: str) -> str:
    return f"ak:{{{key_id}}}:f"


# key id -> (deadline on the monotonic clock, context, verifier)
_local: dict[str, tuple[float, KeyContext, bytes]] = {}
# Invalidations are numbered; a load remembers the number when it started and does not cache
# what it read if its key was invalidated meanwhile (what it read may predate the change, and
# would otherwise outlive the invalidation for API_KEY_CONTEXT_TTL).
_generation = 0
_generation_lock = threading.Lock()
_invalidated: dict[str, int] = {}  # key id -> number of its last invalidation
_LOCAL_MAX = 50_000
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(key_id: str) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(key_id)
        if lock is None:
            if len(_locks) > _LOCAL_MAX:
                _locks.clear()
            lock = _locks[key_id] = threading.Lock()
        return lock


def _invalid() -> KeyRejected:
    return KeyRejected(INVALID_API_KEY, INVALID_KEY_MESSAGE)


def _verify_cold(parsed: key_format.ParsedKey, key_hash: str | None) -> bytes:
    """Run argon2 for a key whose verifier is not cached; cache the verifier when it matches."""
    key_id = parsed.key_id
    vkey = verifier_cache_key(key_id)
    with _lock_for(key_id):
        cached = cache.get(vkey)  # another thread may have verified meanwhile
        if cached is not None:
            return cached
        fkey = failures_cache_key(key_id)
        if (cache.get(fkey) or 0) >= settings.API_KEY_MAX_FAILED_VERIFICATIONS:
            raise _invalid()
        try:
            with argon2_slot():
                if key_hash is None:
                    _, key_hash = context_row(key_id)
                ok = key_hash is not None and check_key_hash(parsed.raw, key_hash)
        except VerificationBusy:
            raise KeyRejected(VERIFICATION_BUSY, BUSY_MESSAGE, status=503) from None
        if not ok:
            cache.add(fkey, 0, FAILURE_WINDOW)
            try:
                cache.incr(fkey)
            except ValueError:  # expired between add and incr
                cache.set(fkey, 1, FAILURE_WINDOW)
            raise _invalid()
        digest = verifier(parsed.raw)
        cache.set(vkey, digest, settings.API_KEY_VERIFIER_TTL)
        return digest


def _changed_since(key_id: str, generation: int) -> bool:
    return _invalidated.get(key_id, 0) > generation


def _load(parsed: key_format.ParsedKey) -> tuple[KeyContext, bytes]:
    key_id = parsed.key_id
    started = _generation
    ckey, vkey = context_cache_key(key_id), verifier_cache_key(key_id)
    found = cache.get_many([ckey, vkey])
    data, digest = found.get(ckey), found.get(vkey)
    key_hash = None
    if data is None or _changed_since(key_id, started):
        for _ in range(3):
            started = _generation
            data, key_hash = context_row(key_id)
            if not _changed_since(key_id, started):
                ttl = MISSING_TTL if data.get("missing") else settings.API_KEY_CONTEXT_TTL
                cache.set(ckey, data, ttl)
                break
    if data.get("missing"):
        raise _invalid()
    if digest is None:
        digest = _verify_cold(parsed, key_hash)
    context = context_from(data)
    if not _changed_since(key_id, started):
        if len(_local) > _LOCAL_MAX:
            _local.clear()
        _local[key_id] = (time.monotonic() + settings.API_KEY_LOCAL_TTL, context, digest)
    return context, digest


def authenticate_key(raw: str) -> KeyContext:
    """The context of a valid, live key, or KeyRejected. See the module docstring."""
    parsed = key_format.parse(raw)
    if parsed is None:
        raise _invalid()
    entry = _local.get(parsed.key_id)
    if entry is not None and entry[0] > time.monotonic():
        context, digest = entry[1], entry[2]
    else:
        context, digest = _load(parsed)
    return _checked(raw, context, digest)


def _checked(raw: str, context: KeyContext, digest: bytes) -> KeyContext:
    if not verifier_matches(raw, digest):
        raise _invalid()
    if context.revoked_at is not None:
        raise KeyRejected(KEY_REVOKED, REVOKED_KEY_MESSAGE)
    if context.expires_at is not None and context.expires_at <= time.time():
        raise KeyRejected(KEY_EXPIRED, EXPIRED_KEY_MESSAGE)
    return context


def _authenticate_in_thread(raw: str) -> KeyContext:
    try:
        return authenticate_key(raw)
    finally:
        # A worker thread of the default executor: nothing else would ever close (or health
        # check) a database connection opened here. The SQL path is rare (a cold context), so
        # a fresh connection for it is cheaper than a stale one that fails later.
        connections.close_all()


# (event loop id, key id) -> the load of that key in flight on that loop
_loading: dict[tuple[int, str], asyncio.Future] = {}


def _warm(raw: str, key_id: str) -> KeyContext | None:
    entry = _local.get(key_id)
    if entry is not None and entry[0] > time.monotonic():
        return _checked(raw, entry[1], entry[2])
    return None


async def aauthenticate_key(raw: str) -> KeyContext:
    """authenticate_key for async views. A key warm in this process's layer is verified inline
    (one HMAC, no I/O); otherwise the cache, SQL and argon2 work runs in a worker thread, never
    on the event loop (not thread-sensitive: a cold key must not queue behind other requests'
    ORM calls).

    One load per key at a time on a loop: the requests of a key that arrive while its entry
    is being loaded wait for that load and check their own secret against what it brought
    (docs/key-verification.md). If the load brought nothing for them (its own secret was wrong
    before the verifier was cached, or it failed), each tries on its own."""
    parsed = key_format.parse(raw)
    if parsed is None:
        raise _invalid()
    context = _warm(raw, parsed.key_id)
    if context is not None:
        return context
    loop = asyncio.get_running_loop()
    flight = (id(loop), parsed.key_id)
    loading = _loading.get(flight)
    if loading is not None:
        await asyncio.shield(loading)
        context = _warm(raw, parsed.key_id)
        if context is not None:
            return context
        return await sync_to_async(_authenticate_in_thread, thread_sensitive=False)(raw)
    loading = _loading[flight] = loop.create_future()
    try:
        return await sync_to_async(_authenticate_in_thread, thread_sensitive=False)(raw)
    finally:
        if _loading.get(flight) is loading:
            del _loading[flight]
        loading.set_result(None)


def prime(raw: str) -> None:
    """Cache the verifier of a key just issued, so its first use costs no argon2 either."""
    parsed = key_format.parse(raw)
    if parsed is not None:
        cache.set(verifier_cache_key(parsed.key_id), verifier(raw), settings.API_KEY_VERIFIER_TTL)
        cache.delete(context_cache_key(parsed.key_id))  # drop a cached "missing"


def invalidate(*key_ids: str) -> None:
    """Forget the cached contexts of these keys (after any change to them or their plan)."""
    global _generation
    if not key_ids:
        return
    with _generation_lock:
        _generation += 1
        if len(_invalidated) > _LOCAL_MAX:
            _invalidated.clear()
        for key_id in key_ids:
            _invalidated[key_id] = _generation
    cache.delete_many([context_cache_key(k) for k in key_ids])
    for key_id in key_ids:
        _local.pop(key_id, None)


def forget(*key_ids: str) -> None:
    """Forget everything cached about these keys (they were deleted)."""
    invalidate(*key_ids)
    cache.delete_many([verifier_cache_key(k) for k in key_ids])


def clear_local() -> None:
    _local.clear()
