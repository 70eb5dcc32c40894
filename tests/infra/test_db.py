"""infra/db.py: a write SQLite refuses as locked is tried again; nothing else is."""

import pytest
from django.db import OperationalError

from infra.db import when_unlocked


def failing(errors: list[Exception]):
    calls = []

    def write():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "written"

    return write, calls


def test_a_locked_database_is_tried_again_until_the_write_goes_through():
    write, calls = failing([OperationalError("database is locked")] * 2)
    assert when_unlocked(write) == "written"
    assert len(calls) == 3


def test_other_database_errors_are_raised_at_once():
    write, calls = failing([OperationalError("server closed the connection unexpectedly")])
    with pytest.raises(OperationalError, match="server closed"):
        when_unlocked(write)
    assert len(calls) == 1


def test_a_lock_that_never_goes_is_raised_after_the_last_attempt():
    write, calls = failing([OperationalError("database table is locked")] * 10)
    with pytest.raises(OperationalError, match="locked"):
        when_unlocked(write, attempts=3)
    assert len(calls) == 3
