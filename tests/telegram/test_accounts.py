"""Several Telegram accounts on one host: one `tgstack --account NAME gateway` per account.

Each account has its own env file beside the main one (gateway-NAME.env: its channels, session
and port), signs in with `tgstack --account NAME login` and runs a gateway of its own, as the
role's template unit tgstack-gateway@NAME does. Over the wire against the local server, into one
real PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.conftest import TestDatabase
from tgstack_testing.localstack import free_port, wait_until
from tgstack_testing.telegram.control import ControlClient

from .conftest import TEST_CODE, TelegramServerProcess
from .test_gateway import Gateway, _metric, marked

ACCOUNTS = {"alpha": "+15550201", "beta": "+15550202"}
POSTS_PER_CHANNEL = 20


class AccountGateway(Gateway):
    """`tgstack --account NAME gateway`, configured by the env files only."""

    def __init__(self, env: dict[str, str], log: Path, account: str, port: int) -> None:
        super().__init__(env | {"TGSTACK_GATEWAY_PORT": str(port)}, log)
        self.account = account

    def start(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "TGSTACK_GATEWAY_PORT"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgstack", "--account", self.account, "gateway"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )  # fmt: skip


def write_private(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def rows_per_channel(db: TestDatabase) -> dict[int, int]:
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        found = conn.execute(
            "SELECT channel_id, count(*) FROM telegram_gateway.messages GROUP BY channel_id"
        ).fetchall()
    return {int(channel): int(count) for channel, count in found}


def test_two_accounts_on_one_host_each_ingest_only_their_own_channels(
    tg_server: TelegramServerProcess, control: ControlClient, db: TestDatabase, tmp_path: Path
) -> None:
    channels: dict[str, list[int]] = {}
    for name, phone in ACCOUNTS.items():
        control.create_account(phone, first_name=name)
        channels[name] = [
            int(control.create_channel(f"{name} {i}", members=[phone])["id"]) for i in range(3)
        ]
    # alpha is also a member of one of beta's channels: its client gets those posts pushed too.
    control.ensure_channel("beta 0", members=[ACCOUNTS["alpha"]], id=channels["beta"][0])
    config = tmp_path / "etc"
    config.mkdir()
    write_private(config / "tgstack.env", {
        "TGSTACK_DATABASE_URL": db.app_dsn,
        "TGSTACK_TELEGRAM_API_ID": "12345",
        "TGSTACK_TELEGRAM_API_HASH": "0123456789abcdef0123456789abcdef",
        "TGSTACK_TELEGRAM_SERVER": f"127.0.0.1:{tg_server.port}",
        "TGSTACK_TELEGRAM_SERVER_DC": str(tg_server.dc_id),
        "TGSTACK_TELEGRAM_SERVER_RSA_KEY": str(tg_server.state_dir / "server_public.pem"),
        "TGSTACK_GATEWAY_SOURCE": "telethon",
        "TGSTACK_GATEWAY_BATCH_DELAY_MS": "0",
    })  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")}
    env["TGSTACK_ENV_FILE"] = str(config / "tgstack.env")
    gateways = {}
    for name, phone in ACCOUNTS.items():
        port = free_port()
        write_private(config / f"gateway-{name}.env", {
            "TGSTACK_CHANNELS": ",".join(str(marked(c)) for c in channels[name]),
            "TGSTACK_TELEGRAM_SESSION": str(tmp_path / "sessions" / f"gateway-{name}.session"),
            "TGSTACK_GATEWAY_PORT": str(port),
        })  # fmt: skip
        signed_in = subprocess.run(
            [sys.executable, "-m", "tgstack", "--account", name, "login",
             "--phone", phone, "--code", TEST_CODE],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert signed_in.returncode == 0, signed_in.stderr
        assert "3 of 3 configured channel(s) among the account's dialogs" in signed_in.stdout
        gateways[name] = AccountGateway(env, tmp_path / f"{name}.log", name, port)

    try:
        for gateway in gateways.values():
            gateway.start()
        for gateway in gateways.values():
            gateway.wait_healthy()
        for name in ACCOUNTS:
            for channel in channels[name]:
                control.post_many(channel, POSTS_PER_CHANNEL, text=f"{name} post {{n}}")
        everything = {marked(c): POSTS_PER_CHANNEL for cs in channels.values() for c in cs}
        wait_until(lambda: rows_per_channel(db) == everything, 60, "every post stored once")

        for name, gateway in gateways.items():
            health = gateway.health() or {}
            read = _metric(gateway.port, "tgstack_gateway_messages_stored_total") + _metric(
                gateway.port, "tgstack_gateway_duplicates_total"
            )
            assert health.get("account") == name
            assert _metric(gateway.port, f'tgstack_gateway_account_info{{account="{name}"}}') == 1
            # Its own three channels' posts, and not one of beta's channel that alpha is in.
            assert read == 3 * POSTS_PER_CHANNEL, (name, read)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    sessions = sorted((tmp_path / "sessions").iterdir())
    assert [p.name for p in sessions] == ["gateway-alpha.session", "gateway-beta.session"]
    assert {p.stat().st_mode & 0o777 for p in sessions} == {0o600}
