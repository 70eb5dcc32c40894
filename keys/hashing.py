"""How keys are kept: argon2id at rest, an HMAC verifier in the cache.

argon2id (argon2-cffi, parameters from settings) is what the database holds. It is slow and
memory-hard on purpose, so it runs at most once per key per cache lifetime, never more than
API_KEY_ARGON2_MAX_CONCURRENCY at a time per process (peak memory: that many times
memory_cost), and a wrong secret for a key whose verifier is cached costs one HMAC instead.

The verifier is HMAC-SHA256 of the whole key under a server-side secret derived from
SECRET_KEY (or API_KEY_PEPPER). It lives only in the cache and is useless without that secret.
"""

import ctypes
import ctypes.util
import hashlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from django.conf import settings


def _return_big_allocations_to_the_os() -> None:
    """Make glibc serve argon2's multi-MiB blocks with mmap and unmap them on free.

    By default glibc raises its mmap threshold after the first large free, so later argon2
    blocks come from per-thread arenas and stay resident: under many threads, RSS grows to
    arenas x memory_cost although only API_KEY_ARGON2_MAX_CONCURRENCY blocks are ever live
    (measured by `make bench`: ~420 MiB instead of ~60 MiB for 100 concurrent wrong secrets).
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


_return_big_allocations_to_the_os()


class VerificationBusy(Exception):
    """Every argon2 slot stayed taken for API_KEY_ARGON2_WAIT_SECONDS."""


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    params = settings.API_KEY_ARGON2
    return PasswordHasher(
        time_cost=params["time_cost"],
        memory_cost=params["memory_cost"],
        parallelism=params["parallelism"],
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


@lru_cache(maxsize=1)
def _slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(settings.API_KEY_ARGON2_MAX_CONCURRENCY)


@lru_cache(maxsize=1)
def _pepper() -> bytes:
    base = settings.API_KEY_PEPPER or settings.SECRET_KEY
    return hashlib.sha256(b"aibaas.keys.verifier:" + base.encode()).digest()


def hash_key(raw: str) -> str:
    """The argon2id hash stored for a new key (encoded string with its own parameters)."""
    return _hasher().hash(raw)


@contextmanager
def argon2_slot() -> Iterator[None]:
    """One of API_KEY_ARGON2_MAX_CONCURRENCY slots per process for the cold path (the hash
    lookup and argon2 run inside it), or VerificationBusy after API_KEY_ARGON2_WAIT_SECONDS."""
    if not _slots().acquire(timeout=settings.API_KEY_ARGON2_WAIT_SECONDS):
        raise VerificationBusy
    try:
        yield
    finally:
        _slots().release()


def check_key_hash(raw: str, encoded: str) -> bool:
    """Run argon2 once (call it inside `argon2_slot`). False for any mismatch or bad hash."""
    try:
        return _hasher().verify(encoded, raw)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def verifier(raw: str) -> bytes:
    return hmac.new(_pepper(), raw.encode(), hashlib.sha256).digest()


def verifier_matches(raw: str, expected: bytes) -> bool:
    return hmac.compare_digest(verifier(raw), expected)
