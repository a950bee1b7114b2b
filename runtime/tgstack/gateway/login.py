"""``tgstack login``: create the Telegram user session once, and fill its entity cache.

Interactive by default (phone, code, two-step password are asked for). Non-interactive when
the answers are given: ``--phone`` / ``TGSTACK_LOGIN_PHONE``, ``--code`` /
``TGSTACK_LOGIN_CODE`` and ``TGSTACK_LOGIN_PASSWORD``; without a terminal a missing answer is
an error, never a prompt that hangs. A session that is already authorised asks for nothing.

After signing in, the account's dialogs are read: that stores every channel's access hash in
the session, which the gateway needs to resolve its channels (a user account can reach a
channel only with the access hash Telegram gave it). Configured channels that are not among
the dialogs are reported.

The session file is written where the gateway service reads it, with mode 0600 in a 0700
directory: it is as good as the account's password.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tgstack.config import Settings
from tgstack.gateway.client import build_client, session_path

ENV_PHONE = "TGSTACK_LOGIN_PHONE"
ENV_CODE = "TGSTACK_LOGIN_CODE"
ENV_PASSWORD = "TGSTACK_LOGIN_PASSWORD"  # noqa: S105 - the variable's name, not a password


class LoginError(RuntimeError):
    """Login cannot go on without an answer the operator did not give."""


@dataclass(frozen=True)
class LoginAnswers:
    phone: str | None = None
    code: str | None = None
    password: str | None = None

    @classmethod
    def from_environment(cls, phone: str | None = None, code: str | None = None) -> LoginAnswers:
        return cls(
            phone=phone or os.environ.get(ENV_PHONE) or None,
            code=code or os.environ.get(ENV_CODE) or None,
            password=os.environ.get(ENV_PASSWORD) or None,
        )


@dataclass(frozen=True)
class LoginReport:
    account: str
    session: Path
    channels_found: list[int]
    channels_missing: list[int]

    def lines(self) -> list[str]:
        found = len(self.channels_found)
        wanted = found + len(self.channels_missing)
        lines = [
            f"logged in as {self.account}; session saved to {self.session} (mode 0600); "
            f"{found} of {wanted} configured channel(s) among the account's dialogs"
        ]
        lines += [
            f"warning: channel {channel} is not among the account's dialogs: join it with this "
            "account, then run `tgstack login` again"
            for channel in self.channels_missing
        ]
        return lines


def secure_session_file(path: Path) -> None:
    if path.exists():
        path.chmod(0o600)
    journal = path.with_name(path.name + "-journal")
    if journal.exists():
        journal.chmod(0o600)


def _answer(
    given: str | None, prompt: Callable[[], str], what: str, flag: str
) -> Callable[[], str]:
    def ask() -> str:
        if given is not None:
            return given
        if not sys.stdin.isatty():
            raise LoginError(f"{what} needed and no terminal to ask on: give {flag}")
        return prompt()

    return ask


async def login(settings: Settings, answers: LoginAnswers) -> LoginReport:
    from telethon import types, utils

    path = session_path(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    client = build_client(settings, gateway=False)
    try:
        await client.start(
            phone=_answer(
                answers.phone,
                lambda: input("Phone number (international format, e.g. +5511…): "),
                "the phone number",
                f"--phone or {ENV_PHONE}",
            ),
            code_callback=_answer(
                answers.code,
                lambda: input("Login code sent by Telegram: "),
                "the login code",
                f"--code or {ENV_CODE}",
            ),
            password=_answer(
                answers.password,
                lambda: getpass.getpass("Two-step verification password: "),
                "the two-step verification password",
                ENV_PASSWORD,
            ),
        )
        me = await client.get_me()
        await client.get_dialogs()  # stores each channel's access hash in the session
        found, missing = [], []
        for channel in settings.channels:
            peer = types.PeerChannel(utils.resolve_id(channel)[0])
            try:
                await client.get_input_entity(peer)
                found.append(channel)
            except ValueError:
                missing.append(channel)
    finally:
        await client.disconnect()
        secure_session_file(path)
    account = getattr(me, "username", None) or getattr(me, "first_name", None) or "account"
    return LoginReport(account, path, found, missing)


def run_login(settings: Settings, answers: LoginAnswers) -> LoginReport:
    return asyncio.run(login(settings, answers))
