"""tgstack.postgres: what a failure was, from errors real PostgreSQL and PgBouncer raise.

Each kind is provoked for real and classified; then both stores (``tgstack.db.Database`` and
the API's ``ApiStore``, through PgBouncer as they run) are shown to raise the one family for
the same failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tgstack.api.queries import (
    ApiStore,
    StoreConflict,
    StoreError,
    StoreInvalid,
    StoreTimeout,
    StoreUnavailable,
)
from tgstack.db import Database
from tgstack.postgres import (
    DatabaseError,
    DatabaseTimeout,
    DatabaseUnavailable,
    Failure,
    InvalidInput,
    classify,
    connection_pool,
    first_line,
)
from tgstack_testing.localstack import free_port


def raised(dsn: str, *statements: str) -> psycopg.Error:
    """The error the last of ``statements`` raises on one autocommit connection.

    Given the direct DSN: a session setting made through PgBouncer in transaction pooling
    would stay on the server connection for whoever draws it next."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        for statement in statements[:-1]:
            conn.execute(statement.encode())
        try:
            conn.execute(statements[-1].encode())
        except psycopg.Error as exc:
            return exc
    raise AssertionError(f"{statements[-1]!r} did not fail")


def unreachable_dsn() -> str:
    return f"host=127.0.0.1 port={free_port()} dbname=x user=x password=x connect_timeout=1"


@pytest.mark.parametrize(
    ("statements", "failure"),
    [
        (["SELECT 1 / 0"], Failure.INVALID),
        (["SELECT 'x'::int"], Failure.INVALID),
        (
            ["CREATE TEMP TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1), (1)"],
            Failure.INVALID,
        ),
        (["SET statement_timeout = 50", "SELECT pg_sleep(2)"], Failure.TIMEOUT),
        (["DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$"], Failure.ROLLED_BACK),
        (["DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$"], Failure.ROLLED_BACK),
        (["SELECT pg_terminate_backend(pg_backend_pid())"], Failure.LOST),
        (["SELEC 1"], Failure.OTHER),
        (["SELECT * FROM no_such_table"], Failure.OTHER),
    ],
    ids=[
        "division-by-zero",
        "bad-cast",
        "unique-violation",
        "statement-timeout",
        "deadlock",
        "serialization-failure",
        "terminated-backend",
        "syntax-error",
        "undefined-table",
    ],
)
def test_each_server_error_is_classified(db: Any, statements: list[str], failure: Failure) -> None:
    exc = raised(db.direct_dsn, *statements)

    assert classify(exc) is failure


def test_a_deadlock_between_two_transactions_is_rolled_back(db: Any) -> None:
    with psycopg.connect(db.direct_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE pair (id int PRIMARY KEY, n int)")
        setup.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
    both_hold_one = threading.Barrier(2, timeout=10)
    errors: list[psycopg.Error] = []

    def lock(first: int, second: int) -> None:
        with psycopg.connect(db.direct_dsn) as conn:
            try:
                conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (first,))
                both_hold_one.wait()
                conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (second,))
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=lock, args=ids) for ids in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert [classify(exc) for exc in errors] == [Failure.ROLLED_BACK]
    assert Failure.ROLLED_BACK.transient


def test_a_refused_connection_is_lost() -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(unreachable_dsn())

    assert classify(caught.value) is Failure.LOST
    assert Failure.LOST.transient


def test_a_pool_without_a_connection_in_time_is_unreachable() -> None:
    pool = connection_pool(
        unreachable_dsn(),
        psycopg.Connection,
        name="t-unreachable",
        min_size=0,
        max_size=1,
        timeout=0.3,
        connect_timeout=1,
        prepared_statements=False,
    )
    pool.open(wait=False)
    try:
        with pytest.raises(psycopg.OperationalError) as caught, pool.connection():
            pass
    finally:
        pool.close()

    assert classify(caught.value) is Failure.UNREACHABLE
    assert Failure.UNREACHABLE.transient


def test_a_closed_pool_is_closed_and_not_worth_a_retry(db: Any) -> None:
    pool = connection_pool(
        db.app_dsn,
        psycopg.Connection,
        name="t-closed",
        min_size=0,
        max_size=1,
        timeout=1.0,
        connect_timeout=1,
        prepared_statements=False,
    )
    with pytest.raises(psycopg.OperationalError) as caught, pool.connection():
        pass

    assert classify(caught.value) is Failure.CLOSED
    assert not Failure.CLOSED.transient


@pytest.mark.parametrize(
    "failure", [Failure.CLOSED, Failure.TIMEOUT, Failure.INVALID, Failure.OTHER]
)
def test_only_lost_unreachable_and_rolled_back_are_transient(failure: Failure) -> None:
    assert not failure.transient


def test_the_pool_gives_autocommit_connections_that_load_json_and_take_options(db: Any) -> None:
    pool = connection_pool(
        db.direct_dsn,
        psycopg.Connection,
        name="t-options",
        min_size=1,
        max_size=1,
        timeout=5.0,
        connect_timeout=3,
        prepared_statements=False,
        application_name="tgstack-test",
    )
    with pool, pool.connection() as conn:
        assert conn.autocommit
        assert conn.prepare_threshold is None
        row = conn.execute(
            "SELECT current_setting('application_name'), '{\"a\": [1]}'::jsonb"
        ).fetchone()
    assert row == ("tgstack-test", {"a": [1]})


def test_the_first_line_leaves_out_detail_and_hint(db: Any) -> None:
    exc = raised(db.direct_dsn, "SELECT 1 / 0")

    assert first_line(exc) == "division by zero"
    assert first_line(RuntimeError()) == "RuntimeError"


# Both stores, one family --------------------------------------------------------------------------


def test_the_api_names_are_the_one_family() -> None:
    assert StoreError is DatabaseError
    assert StoreUnavailable is DatabaseUnavailable
    assert StoreTimeout is DatabaseTimeout
    assert StoreInvalid is InvalidInput
    assert issubclass(StoreConflict, DatabaseError)
    assert str(StoreConflict("create_channel", "channel 7 exists")) == (
        "create_channel: channel 7 exists"
    )


@pytest.fixture
def api_store(db: Any) -> Iterator[ApiStore]:
    store = ApiStore(db.app_dsn, statement_timeout_ms=300)
    store.open()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def database(db: Any) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=2, retry_attempts=2, retry_backoff=0.01) as database:
        yield database


def run_api(store: ApiStore, sql: str) -> Callable[[], Any]:
    return lambda: store._run("probe", lambda conn: conn.execute(sql.encode()).fetchall())


def run_db(database: Database, sql: str) -> Callable[[], Any]:
    return lambda: database._run("probe", lambda conn: conn.execute(sql.encode()).fetchall())


@pytest.mark.parametrize("store_kind", ["api", "db"])
@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("SELECT 1 / 0", InvalidInput, r"^probe: division by zero$"),
        ("SELEC 1", DatabaseError, r"^probe: syntax error"),
        (
            "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$",
            DatabaseUnavailable,
            r"^probe: ",
        ),
    ],
    ids=["invalid", "other", "rolled-back"],
)
def test_both_stores_raise_the_one_family(
    api_store: ApiStore,
    database: Database,
    store_kind: str,
    sql: str,
    error: type[DatabaseError],
    message: str,
) -> None:
    run = run_api(api_store, sql) if store_kind == "api" else run_db(database, sql)

    with pytest.raises(error, match=message) as caught:
        run()

    assert caught.value.operation == "probe"


def test_a_statement_past_the_deadline_is_a_timeout_in_both_stores(
    api_store: ApiStore, db: Any
) -> None:
    with pytest.raises(DatabaseTimeout, match=r"^probe: cancelled \(canceling statement"):
        run_api(api_store, "SELECT pg_sleep(5)")()
    # A server-side statement timeout for this pool only (PgBouncer drops ``options``).
    with (
        Database(f"{db.direct_dsn} options='-c statement_timeout=50'") as database,
        pytest.raises(DatabaseTimeout, match=r"^probe: canceling statement due to statement"),
    ):
        run_db(database, "SELECT pg_sleep(2)")()


def test_an_unreachable_database_is_unavailable_in_both_stores() -> None:
    store = ApiStore(unreachable_dsn(), timeout=0.3, statement_timeout_ms=2000)
    store.open()
    database = Database(unreachable_dsn(), min_size=0, timeout=0.3, retry_backoff=0.01)
    database.open(wait=False)
    try:
        with pytest.raises(DatabaseUnavailable, match=r"^probe: no connection \("):
            run_api(store, "SELECT 1")()
        with pytest.raises(DatabaseUnavailable, match=r"^probe: database unavailable after 3"):
            run_db(database, "SELECT 1")()
    finally:
        store.close()
        database.close()
