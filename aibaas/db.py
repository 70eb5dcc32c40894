"""Database helpers shared by the apps."""

import time
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError

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
