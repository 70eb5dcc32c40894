"""Database helpers shared by the apps."""

import functools
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, connections

T = TypeVar("T")

LOCKED_ATTEMPTS = 5


def when_unlocked(write: Callable[[], T], *, attempts: int = LOCKED_ATTEMPTS) -> T:
    """Run a database write; while SQLite answers that another writer holds its lock ("database
    is locked", "database table is locked"), run it again a little later (50 ms, 100 ms, ...).
    A file database waits its own timeout first; an in-memory one (the test suite's) refuses at
    once. Other errors, and the last refusal, are raised. PostgreSQL never answers so."""
    for attempt in range(attempts):
        try:
            return write()
        except OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def release_connections() -> None:
    """Give this thread's database connections back (to the pool: aibaas/settings/services.py),
    unless a transaction is open. Django does this at the end of each request; ORM work outside
    one (a gateway task's thread, an executor) must do it itself, or its thread keeps a pooled
    connection that no request can use."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def releasing_connections(func: Callable[..., T]) -> Callable[..., T]:
    """`func`, followed by release_connections(), whatever it raised."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> T:
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    return wrapper
