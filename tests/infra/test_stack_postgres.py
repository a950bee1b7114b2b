"""PostgreSQL and PgBouncer: SCRAM-SHA-256 logins with the verifiers the role computed."""

from __future__ import annotations

import shlex
from typing import Any

from conftest import Masked, StackSettings, docker_exec, docker_inspect

testinfra_hosts = ["ansible://tgstack"]


def _psql(
    masked: Masked, settings: StackSettings, dsn: str, sql: str, password: str
) -> tuple[int, str, str]:
    """psql from the PostgreSQL image on the host network: it reaches the published ports."""
    image = docker_inspect(masked.host, settings.containers["postgres"])["Config"]["Image"]
    command = (
        f"docker run --rm --network host -e PGPASSWORD --entrypoint psql {shlex.quote(image)} "
        f"--no-psqlrc -At {shlex.quote(dsn)} -c {shlex.quote(sql)}"
    )
    return masked.run(command, PGPASSWORD=password)


def test_pgbouncer_accepts_scram_login(
    masked: Masked, settings: StackSettings, secrets: dict[str, str]
) -> None:
    dsn = (
        f"host={settings.bind_address} port={settings.pgbouncer_port} dbname={settings.database} "
        f"user={settings.app_user} require_auth=scram-sha-256 sslmode=disable"
    )
    rc, out, err = _psql(
        masked,
        settings,
        dsn,
        "SELECT current_user, current_database()",
        secrets["postgres_app_password"],
    )
    assert rc == 0, err
    assert out.strip() == f"{settings.app_user}|{settings.database}"


def test_pgbouncer_rejects_a_wrong_password(masked: Masked, settings: StackSettings) -> None:
    dsn = (
        f"host={settings.bind_address} port={settings.pgbouncer_port} dbname={settings.database} "
        f"user={settings.app_user} sslmode=disable"
    )
    rc, _, err = _psql(masked, settings, dsn, "SELECT 1", "not-the-password")
    assert rc != 0
    assert "password authentication failed" in err or "SASL authentication failed" in err, err


def test_postgres_accepts_direct_scram_login(
    masked: Masked, settings: StackSettings, secrets: dict[str, str]
) -> None:
    dsn = (
        f"host={settings.bind_address} port={settings.postgres_port} dbname={settings.database} "
        f"user={settings.app_user} require_auth=scram-sha-256 sslmode=disable"
    )
    rc, out, err = _psql(
        masked, settings, dsn, "SELECT current_user", secrets["postgres_app_password"]
    )
    assert rc == 0, err
    assert out.strip() == settings.app_user


def test_database_role_has_the_same_verifier_as_pgbouncer(
    root: Any, settings: StackSettings
) -> None:
    sql = f"SELECT rolpassword FROM pg_authid WHERE rolname = '{settings.app_user}'"
    result = docker_exec(
        root,
        settings.containers["postgres"],
        "psql",
        "--no-psqlrc",
        "-At",
        "-c",
        sql,
        user="postgres",
    )
    assert result.rc == 0, result.stderr
    stored = result.stdout.strip()
    userlist = root.file(f"{settings.stack_dir}/config/pgbouncer/userlist.txt").content_string
    expected = f'"{settings.app_user}" "{stored}"'
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert expected in userlist.splitlines(), "userlist.txt and pg_authid hold different verifiers"


def test_pgbouncer_pools_in_transaction_mode(
    masked: Masked, settings: StackSettings, secrets: dict[str, str]
) -> None:
    dsn = (
        f"host={settings.bind_address} port={settings.pgbouncer_port} dbname=pgbouncer "
        f"user={settings.pgbouncer_admin_user} sslmode=disable"
    )
    rc, out, err = _psql(masked, settings, dsn, "SHOW CONFIG", secrets["pgbouncer_admin_password"])
    assert rc == 0, err
    config = {line.split("|")[0]: line.split("|")[1] for line in out.splitlines() if "|" in line}
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == "20"
    assert config["max_client_conn"] == "100"
    assert config["min_pool_size"] == "5"
    assert config["reserve_pool_size"] == "5"
    assert config["auth_type"] == "scram-sha-256"
    assert set(config["ignore_startup_parameters"].split(",")) >= {"extra_float_digits", "options"}


def test_application_role_owns_the_database_with_timescaledb(
    root: Any, settings: StackSettings
) -> None:
    sql = (
        "SELECT pg_get_userbyid(datdba), "
        "(SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb') "
        f"FROM pg_database WHERE datname = '{settings.database}'"
    )
    result = docker_exec(
        root,
        settings.containers["postgres"],
        "psql",
        "--no-psqlrc",
        "-At",
        "-d",
        settings.database,
        "-c",
        sql,
        user="postgres",
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == f"{settings.app_user}|1"
