"""The one place a Telethon ``TelegramClient`` is built: ``tgstack login`` and the gateway.

Production talks to Telegram's own data centres with Telethon's defaults. When
``TGSTACK_TELEGRAM_SERVER`` names another MTProto server (the sandbox's local test server),
the session's data centre is pointed at it and the server's RSA key is trusted for the
auth-key exchange; the client itself is the same, unpatched ``TelegramClient``.

The gateway's client never sleeps a FloodWait inside Telethon (``flood_sleep_threshold=0``):
every wait reaches the gateway's FloodWait policy (tgstack.gateway.flood), which logs it, counts
it and waits it out in place. It is a ``GatewayClient`` (tgstack.gateway.catchup): the same
client on a watched connection, which tells the gateway when to catch up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tgstack.config import ConfigError, Settings, env_name

if TYPE_CHECKING:
    from tgstack.gateway.catchup import LinkWatch
    from tgstack.gateway.flood import FloodPolicy


def session_path(settings: Settings) -> Path:
    """The session file Telethon writes for ``telegram_session`` (``.session`` appended)."""
    path = settings.telegram_session
    return path if path.suffix == ".session" else path.with_name(path.name + ".session")


def trust_server_key(pem_path: Path) -> None:
    """Let Telethon's auth-key exchange accept the server holding this RSA key."""
    from telethon.crypto import rsa

    try:
        pem = pem_path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{env_name('telegram_server_rsa_key')}: cannot read {pem_path}: {exc.strerror}"
        ) from exc
    try:
        rsa.add_key(pem, old=False)
    except ValueError as exc:
        raise ConfigError(
            f"{env_name('telegram_server_rsa_key')}: {pem_path} is not a PEM RSA public key"
        ) from exc


def build_client(
    settings: Settings,
    *,
    gateway: bool,
    watch: LinkWatch | None = None,
    flood: FloodPolicy | None = None,
) -> Any:
    """A ``TelegramClient`` on the configured session; ``gateway`` adds the service's options
    (updates with catch-up, endless reconnection, no FloodWait sleeps inside Telethon), and
    ``watch`` makes it a ``GatewayClient`` reporting reconnects and update-loop FloodWaits,
    whose other requests follow the FloodWait policy ``flood``."""
    from telethon import TelegramClient

    api_id, api_hash = settings.require_telegram_credentials()
    endpoint = settings.telegram_endpoint()
    options: dict[str, Any] = {}
    client_class: Any = TelegramClient
    if watch is not None:
        from tgstack.gateway.catchup import GatewayClient

        client_class = GatewayClient
        options["watch"] = watch
        options["flood"] = flood
    if gateway:
        options |= {
            "receive_updates": True,
            "catch_up": True,
            "auto_reconnect": True,
            "connection_retries": -1,
            "retry_delay": 1,
            "flood_sleep_threshold": 0,
        }
    path = session_path(settings)
    old_umask = os.umask(0o077)  # the session file is as good as the account's password
    try:
        client = client_class(str(path), api_id, api_hash, **options)
    finally:
        os.umask(old_umask)
    if endpoint is not None:
        host, port, key = endpoint
        trust_server_key(key)
        client.session.set_dc(settings.telegram_server_dc, host, port)
    return client
