"""The quota's own PostgreSQL connections for the event loop (batched.py): psycopg
AsyncConnections, a few per loop, autocommit, prepared, with a statement_timeout, instead of
Django's connection and a thread. A statement whose connection broke under it raises
StatementLost: applied or not, nobody knows, and the caller decides whether to run it again.
Why these connections (measured): docs/quota-leases.md.
"""

import asyncio
import select
from contextlib import suppress

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections


def _connection_params() -> dict:
    params = connections[DEFAULT_DB_ALIAS].get_connection_params()
    for name in ("cursor_factory", "context"):  # Django's sync cursor and adapters
        params.pop(name, None)
    params["autocommit"] = True
    # Prepared on first use: the statement's plan costs ~0.4 ms to make each time (measured
    # here: 0.88 ms a statement unprepared, 0.46 ms prepared). Off behind a transaction-mode
    # PgBouncer older than 1.21 (QUOTA_DB_PREPARED=False), as Django's own connections are.
    params["prepare_threshold"] = 0 if settings.QUOTA_DB_PREPARED else None
    timeout = settings.QUOTA_DB_TIMEOUT_SECONDS
    params.setdefault("connect_timeout", max(1, round(timeout)))
    options = f"{params.get('options', '')} -c statement_timeout={int(timeout * 1000)}"
    params["options"] = options.strip()
    return params


class StatementLost(Exception):
    """The connection broke while a statement ran: applied or not, nobody knows."""

    def __init__(self, message: str, *, kept: bool) -> None:
        super().__init__(message)
        self.kept = kept  # the connection had been kept idle (it most likely died meanwhile)


class Connections:
    """The quota's connections of one event loop: at most `size` at once, idle ones kept."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection] = []
        self.all: set[psycopg.AsyncConnection] = set()

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(**_connection_params())
        self.all.add(conn)
        return conn

    def discard(self, conn: psycopg.AsyncConnection) -> None:
        self.all.discard(conn)
        _finish(conn)

    def _kept(self) -> psycopg.AsyncConnection | None:
        """An idle connection still open, as far as can be told without a round trip."""
        while self.idle:
            conn = self.idle.pop()
            if not _closed_while_idle(conn):
                return conn
            self.discard(conn)  # the server ended it meanwhile: nothing was sent on it
        return None

    async def fetchone(self, statement: str, params: dict) -> tuple | None:
        """The statement's row, on a kept connection or a new one. Raises StatementLost when
        the connection broke while the statement ran: it may have been applied or not, and the
        caller decides whether running it again is safe (batched.py, _run)."""
        async with self.slots:
            conn = self._kept()
            kept = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                row = await _fetchone(conn, statement, params)
            except BaseException as error:
                broken = conn.broken
                self.discard(conn)  # its state is unknown (error, cancellation mid-statement)
                if broken and isinstance(error, psycopg.OperationalError):
                    raise StatementLost(str(error), kept=kept) from error
                raise
            self.idle.append(conn)
            return row

    def finish_all(self) -> None:
        for conn in list(self.all):
            _finish(conn)
        self.all.clear()
        self.idle.clear()


async def _fetchone(conn: psycopg.AsyncConnection, statement: str, params: dict):
    cursor = await conn.execute(statement, params)
    return await cursor.fetchone() if cursor.description else None


def _closed_while_idle(conn: psycopg.AsyncConnection) -> bool:
    """Whether the server closed this idle connection: an idle autocommit session is sent
    nothing, so anything to read (its goodbye, the end of the stream) says so. Checked with a
    poll of its socket, no round trip. (Without poll(), outside POSIX: assumed open.)"""
    if conn.closed:
        return True
    if not hasattr(select, "poll"):
        return False
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _finish(conn: psycopg.AsyncConnection) -> None:
    """Close without the event loop (its loop may be closed already): libpq's PQfinish."""
    with suppress(Exception):  # closing a connection that is already gone
        conn.pgconn.finish()
