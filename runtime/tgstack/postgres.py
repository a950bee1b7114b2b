"""The PostgreSQL base of the runtime's stores: the pool, the error family, what a failure was.

Both stores, ``tgstack.db.Database`` (gateway, poller, CLI) and the API's
``tgstack.api.queries.ApiStore``, reach PostgreSQL the same way: a ``psycopg_pool``
``ConnectionPool`` opened by the caller, connections in autocommit mode through PgBouncer in
transaction pooling, prepared statements off unless asked for (PgBouncer < 1.22 cannot route
them), JSON loaded by ``tgstack.jsonb``. ``connection_pool`` builds that pool.

``classify`` says what a psycopg error means for an operation, whatever the store:

* ``CLOSED`` — the pool is closed (our own state, not the database's);
* ``TIMEOUT`` — the statement was cancelled (statement timeout, a client-side deadline);
* ``UNREACHABLE`` — the pool handed out no connection in time (PostgreSQL or PgBouncer down);
* ``ROLLED_BACK`` — a deadlock or serialization failure (SQLSTATE class 40): the connection is
  fine, the transaction may be run again;
* ``LOST`` — the connection failed or broke during the operation;
* ``INVALID`` — the database refused the input (a data or integrity error);
* ``OTHER`` — anything else (a bug in a statement, a permission).

Each store decides what to do with a kind (which to retry, how often, how to word it) and
raises one of one family: ``DatabaseError`` (its message starts with the operation's name),
``DatabaseUnavailable`` (transient: worth trying again later), ``DatabaseTimeout`` and
``InvalidInput``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from tgstack import jsonb

__all__ = [
    "PREPARE_THRESHOLD",
    "DatabaseError",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "Failure",
    "InvalidInput",
    "classify",
    "connection_pool",
    "first_line",
]

# psycopg's default: prepare a query server-side from its fifth execution on.
PREPARE_THRESHOLD = 5

ConnectionT = TypeVar("ConnectionT", bound=psycopg.Connection[Any])


class DatabaseError(Exception):
    """A database operation failed; ``operation`` names it and the message starts with it."""

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation


class DatabaseUnavailable(DatabaseError):
    """No usable connection to the database (or a transaction still rolled back by a deadlock)
    after the store's retries: transient, worth trying again later."""


class DatabaseTimeout(DatabaseError):
    """The statement was cancelled: it ran past a statement timeout or the caller's deadline."""


class InvalidInput(DatabaseError, ValueError):
    """The database rejected the input (out-of-range id, unknown status, ...)."""


class Failure(enum.Enum):
    """What a psycopg error means for the operation that raised it (see the module's text)."""

    CLOSED = "closed"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    ROLLED_BACK = "rolled back"
    LOST = "lost"
    INVALID = "invalid"
    OTHER = "other"

    @property
    def transient(self) -> bool:
        """Worth running an idempotent operation again on a (fresh) connection."""
        return self in (Failure.UNREACHABLE, Failure.ROLLED_BACK, Failure.LOST)


def classify(exc: psycopg.Error) -> Failure:
    """The kind of failure ``exc`` is; pool errors are psycopg OperationalErrors, so first."""
    if isinstance(exc, PoolClosed):
        return Failure.CLOSED
    if isinstance(exc, pg_errors.QueryCanceled):
        return Failure.TIMEOUT
    if isinstance(exc, PoolTimeout):
        return Failure.UNREACHABLE
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return Failure.INVALID
    # By SQLSTATE: psycopg's DeadlockDetected is not a TransactionRollback.
    if (exc.sqlstate or "").startswith("40"):
        return Failure.ROLLED_BACK
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Failure.LOST
    return Failure.OTHER


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (psycopg's carry DETAIL and HINT lines), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connection_pool(
    conninfo: str,
    connection_class: type[ConnectionT],
    *,
    name: str,
    min_size: int,
    max_size: int,
    timeout: float,
    connect_timeout: int,
    prepared_statements: bool,
    check: Callable[[ConnectionT], None] | None = None,
    reset: Callable[[ConnectionT], None] | None = None,
    **connection_options: Any,
) -> ConnectionPool[ConnectionT]:
    """A pool, not opened yet, of autocommit connections to ``conninfo``.

    ``timeout`` bounds the wait for a connection from the pool, ``connect_timeout`` one
    connection attempt. ``prepared_statements`` lets psycopg prepare a query server-side from
    its fifth run (``PREPARE_THRESHOLD``); off, ``prepare_threshold=None``, as PgBouncer older
    than 1.22 or without ``max_prepared_statements`` needs. ``check`` and ``reset`` are the
    pool's callbacks; ``connection_options`` go to every connection (``row_factory``,
    ``application_name`` …).
    """
    return ConnectionPool(
        conninfo,
        connection_class=connection_class,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout,
        name=name,
        check=check,
        reset=reset,
        configure=jsonb.configure,
        kwargs={
            "autocommit": True,
            "prepare_threshold": PREPARE_THRESHOLD if prepared_statements else None,
            "connect_timeout": connect_timeout,
            **connection_options,
        },
    )
