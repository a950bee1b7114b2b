"""``tgstack login``: create the Telegram user session once, interactively.

The session file is written where the gateway service reads it, with mode 0600 in a 0700
directory: it is as good as the account's password.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path

from tgstack.config import Settings


def session_path(settings: Settings) -> Path:
    path = settings.telegram_session
    return path if path.suffix == ".session" else path.with_name(path.name + ".session")


def secure_session_file(path: Path) -> None:
    if path.exists():
        path.chmod(0o600)
    journal = path.with_name(path.name + "-journal")
    if journal.exists():
        journal.chmod(0o600)


async def _login(settings: Settings) -> str:
    from telethon import TelegramClient

    api_id, api_hash = settings.require_telegram_credentials()
    path = session_path(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        client = TelegramClient(str(path), api_id, api_hash)
        await client.start(
            phone=lambda: input("Phone number (international format, e.g. +5511…): "),
            code_callback=lambda: input("Login code sent by Telegram: "),
            password=lambda: getpass.getpass("Two-step verification password: "),
        )
        me = await client.get_me()
        await client.disconnect()
    finally:
        os.umask(old_umask)
        secure_session_file(path)
    name = getattr(me, "username", None) or getattr(me, "first_name", None) or "account"
    return f"logged in as {name}; session saved to {path} (mode 0600)"


def interactive_login(settings: Settings) -> None:
    print(asyncio.run(_login(settings)))
