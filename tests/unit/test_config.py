"""Settings validation: every bad value is one clear line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgstack.config import ConfigError, load_settings

GOOD_DSN = "postgresql://telegram:secret@127.0.0.1:6434/telegram_gateway"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TGSTACK_"):
            monkeypatch.delenv(name)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")}
    return subprocess.run(
        [sys.executable, "-m", "tgstack", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_valid_environment_loads_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGSTACK_DATABASE_URL", GOOD_DSN)
    monkeypatch.setenv("TGSTACK_REDIS_SENTINELS", "127.0.0.1:26379, 127.0.0.1:26380,[::1]:26381")
    monkeypatch.setenv("TGSTACK_CHANNELS", "-1001649127710,-1001234567890")
    monkeypatch.setenv("TGSTACK_DATABASE_POOL_MAX", "7")
    settings = load_settings()
    assert settings.require_database_url() == GOOD_DSN
    assert settings.sentinel_addresses == [
        ("127.0.0.1", 26379),
        ("127.0.0.1", 26380),
        ("::1", 26381),
    ]
    assert settings.channels == [-1001649127710, -1001234567890]
    assert settings.database_pool_max == 7


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TGSTACK_DATABASE_URL", "postgresql://127.0.0.1:6434", "TGSTACK_DATABASE_URL:"),
        (
            "TGSTACK_DATABASE_URL",
            "host=127.0.0.1 port=6434 dbname=x bogus",
            "TGSTACK_DATABASE_URL:",
        ),
        ("TGSTACK_DATABASE_URL", "postgresql://u@h:99999/db", "invalid port"),
        ("TGSTACK_REDIS_URL", "http://127.0.0.1:6379", "TGSTACK_REDIS_URL: must start with"),
        (
            "TGSTACK_REDIS_URL",
            "redis://127.0.0.1:notaport",
            "TGSTACK_REDIS_URL: has an invalid port",
        ),
        ("TGSTACK_REDIS_SENTINELS", "127.0.0.1", "TGSTACK_REDIS_SENTINELS:"),
        ("TGSTACK_REDIS_SENTINELS", "127.0.0.1:70000", "TGSTACK_REDIS_SENTINELS:"),
        ("TGSTACK_AMQP_URL", "rabbit://host/telegram", "TGSTACK_AMQP_URL: must start with"),
        ("TGSTACK_AMQP_URL", "amqp:///telegram", "TGSTACK_AMQP_URL: names no host"),
        ("TGSTACK_CHANNELS", "1649127710", "TGSTACK_CHANNELS: channel id must be a marked"),
        ("TGSTACK_CHANNELS", "-1001649127710,abc", "TGSTACK_CHANNELS:"),
        ("TGSTACK_CHANNELS", "-1001649127710,-1001649127710", "more than once"),
        ("TGSTACK_DATABASE_POOL_MAX", "0", "TGSTACK_DATABASE_POOL_MAX:"),
        ("TGSTACK_LOG_LEVEL", "LOUD", "TGSTACK_LOG_LEVEL:"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert message.startswith(variable + ":")
    assert expected in message
    assert "\n" not in message


def test_missing_required_dsn_is_reported_by_name() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match=r"^TGSTACK_DATABASE_URL: is required"):
        settings.require_database_url()


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "tgstack.env"
    env_file.write_text(f"TGSTACK_DATABASE_URL={GOOD_DSN}\nTGSTACK_CHANNELS=-1001649127710\n")
    env_file.chmod(0o600)
    settings = load_settings(env_file)
    assert settings.require_database_url() == GOOD_DSN
    assert settings.channels == [-1001649127710]


def test_env_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / "tgstack.env"
    env_file.write_text(f"TGSTACK_DATABASE_URL={GOOD_DSN}\n")
    env_file.chmod(0o644)
    with pytest.raises(ConfigError, match="must not be readable by group or others"):
        load_settings(env_file)


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_an_accounts_env_file_is_read_on_top_of_the_main_one(tmp_path: Path) -> None:
    main = _private(
        tmp_path / "tgstack.env",
        f"TGSTACK_DATABASE_URL={GOOD_DSN}\nTGSTACK_CHANNELS=-1001649127710\n"
        "TGSTACK_GATEWAY_PORT=4006\n",
    )
    _private(
        tmp_path / "gateway-second.env",
        "TGSTACK_CHANNELS=-1001234567890,-1001234567891\nTGSTACK_GATEWAY_PORT=4016\n"
        "TGSTACK_TELEGRAM_SESSION=/var/lib/tgstack/gateway-second.session\n"
        "TGSTACK_GATEWAY_ACCOUNT=not-this-one\n",
    )

    plain = load_settings(main)
    second = load_settings(main, account="second")

    assert (plain.gateway_account, plain.channels, plain.gateway_port) == (
        "main", [-1001649127710], 4006)  # fmt: skip
    assert second.gateway_account == "second"  # the name given, whatever the file says
    assert second.channels == [-1001234567890, -1001234567891]
    assert second.gateway_port == 4016
    assert str(second.telegram_session) == "/var/lib/tgstack/gateway-second.session"
    assert second.require_database_url() == GOOD_DSN  # the main file's, not repeated
    # Two gateways never share a spill or backfill marks, even with sessions in one directory.
    assert second.gateway_state_path() == Path("/var/lib/tgstack/gateway-second.state")
    assert plain.gateway_state_path() == plain.telegram_session.parent / "gateway-main.state"


@pytest.mark.parametrize(
    ("account", "file_mode", "message"),
    [
        ("Second", None, "is not an account name"),
        ("../etc", None, "is not an account name"),
        ("third", None, "gateway-third.env does not exist"),
        ("second", 0o640, "must not be readable by group or others"),
    ],
)
def test_an_account_needs_a_valid_name_and_a_private_env_file(
    tmp_path: Path, account: str, file_mode: int | None, message: str
) -> None:
    main = _private(tmp_path / "tgstack.env", f"TGSTACK_DATABASE_URL={GOOD_DSN}\n")
    second = _private(tmp_path / "gateway-second.env", "TGSTACK_GATEWAY_PORT=4016\n")
    if file_mode is not None:
        second.chmod(file_mode)
    with pytest.raises(ConfigError, match=message):
        load_settings(main, account=account)


def test_an_account_needs_the_main_env_file() -> None:
    with pytest.raises(ConfigError, match="--account needs the main env file"):
        load_settings(None, account="second")


def test_redacted_settings_hide_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGSTACK_DATABASE_URL", GOOD_DSN)
    monkeypatch.setenv("TGSTACK_AMQP_URL", "amqp://telegram:hunter2@127.0.0.1:5672/telegram")
    monkeypatch.setenv("TGSTACK_REDIS_PASSWORD", "redis-secret")
    shown = str(load_settings().redacted())
    for secret in ("secret@", "hunter2", "redis-secret"):
        assert secret not in shown
    assert "telegram:***@127.0.0.1:5672" in shown


def test_cli_bad_setting_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_cli("config", "check", env={"TGSTACK_REDIS_URL": "http://x"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("tgstack: error: TGSTACK_REDIS_URL:")
    assert "Traceback" not in result.stderr


def test_cli_migrate_without_dsn_exits_2_naming_the_setting() -> None:
    result = run_cli("migrate")
    assert result.returncode == 2
    assert "TGSTACK_DATABASE_URL: is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_check_prints_masked_settings() -> None:
    result = run_cli(
        "config",
        "check",
        env={"TGSTACK_DATABASE_URL": GOOD_DSN, "TGSTACK_CHANNELS": "-1001649127710"},
    )
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout
    assert "-1001649127710" in result.stdout


def test_a_test_server_endpoint_needs_its_rsa_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGSTACK_TELEGRAM_SERVER", "127.0.0.1:4443")
    with pytest.raises(ConfigError, match="TGSTACK_TELEGRAM_SERVER_RSA_KEY: is required"):
        load_settings().telegram_endpoint()
    monkeypatch.setenv("TGSTACK_TELEGRAM_SERVER_RSA_KEY", "/etc/tgstack/server.pem")
    assert load_settings().telegram_endpoint() == (
        "127.0.0.1",
        4443,
        Path("/etc/tgstack/server.pem"),
    )


def test_production_talks_to_telegram_itself() -> None:
    assert load_settings().telegram_endpoint() is None


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:0", "host:port", ":443"])
def test_a_bad_test_server_address_is_one_line(value: str) -> None:
    done = run_cli("config", "check", env={"TGSTACK_TELEGRAM_SERVER": value})
    assert done.returncode == 2
    assert "TGSTACK_TELEGRAM_SERVER" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_login_with_an_unreadable_server_key_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tgstack", "login"],
        env={k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")}
        | {
            "TGSTACK_TELEGRAM_API_ID": "1",
            "TGSTACK_TELEGRAM_API_HASH": "0" * 32,
            "TGSTACK_TELEGRAM_SESSION": str(tmp_path / "gateway"),
            "TGSTACK_TELEGRAM_SERVER": "127.0.0.1:1",
            "TGSTACK_TELEGRAM_SERVER_RSA_KEY": str(tmp_path / "missing.pem"),
        },
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "missing.pem" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
