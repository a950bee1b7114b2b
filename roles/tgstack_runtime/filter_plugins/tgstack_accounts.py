"""The gateway accounts of a server, normalised and checked (filter ``tgstack_gateway_accounts``).

One gateway runs per Telegram account (a user account follows about 500 channels at most), as
the template unit ``tgstack-gateway@NAME``. The inventory lists the accounts; an empty list is
one account, ``main``, with the role's single-account settings, so existing inventories keep
their unit's session and port. Invariants checked here, before anything is written: names are
valid systemd instance and file names and unique, each account has its own port and session,
and a channel belongs to one account (two gateways on one channel would read it twice).
"""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = """
name: tgstack_gateway_accounts
short_description: normalise and check tgstack_runtime_gateway_accounts
"""

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
KEYS = {"name", "channels", "port", "session", "phone"}


class AccountError(ValueError):
    """The accounts are not usable; the message names the account and the problem."""


def _channel(value: Any, account: str) -> int:
    try:
        channel = int(value)
    except (TypeError, ValueError):
        raise AccountError(f"account {account}: channel {value!r} is not an integer") from None
    if not -1_999_999_999_999 <= channel <= -1_000_000_000_001:
        raise AccountError(f"account {account}: channel {channel} is not a marked id (-100...)")
    return channel


def tgstack_gateway_accounts(
    accounts: list[dict[str, Any]] | None,
    channels: list[Any],
    port: Any,
    session: str,
    home: str,
    phone: str = "",
) -> list[dict[str, Any]]:
    """[{name, channels, port, session, phone}], one per account, in the inventory's order."""
    if not accounts:
        accounts = [{"name": "main", "channels": channels, "port": port, "session": session}]
    result: list[dict[str, Any]] = []
    owner: dict[int, str] = {}
    for index, raw in enumerate(accounts):
        if not isinstance(raw, dict):
            raise AccountError(f"account #{index + 1} is not a mapping: {raw!r}")
        name = str(raw.get("name", ""))
        if not NAME.fullmatch(name):
            raise AccountError(
                f"account #{index + 1}: name {name!r} must be lower-case letters, digits, _ "
                "and -, at most 32, starting with a letter or digit"
            )
        unknown = set(raw) - KEYS
        if unknown:
            raise AccountError(f"account {name}: unknown keys {sorted(unknown)}")
        own = [_channel(c, name) for c in raw.get("channels") or []]
        for channel in own:
            if channel in owner:
                raise AccountError(
                    f"channel {channel} is in accounts {owner[channel]} and {name}: "
                    "a channel belongs to one account"
                )
            owner[channel] = name
        default_session = f"{home}/gateway.session" if name == "main" else (
            f"{home}/gateway-{name}.session"
        )
        try:
            account_port = int(raw.get("port", 0))
        except (TypeError, ValueError):
            port_given = raw.get("port")
            raise AccountError(f"account {name}: port {port_given!r} is not a number") from None
        if not 0 < account_port < 65536:
            raise AccountError(f"account {name}: needs a port (1..65535) for its /health")
        result.append({
            "name": name,
            "channels": own,
            "port": account_port,
            "session": str(raw.get("session") or default_session),
            "phone": str(raw.get("phone") or (phone if name == "main" else "")),
        })  # fmt: skip
    for key in ("name", "port", "session"):
        values = [a[key] for a in result]
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise AccountError(f"accounts share a {key}: {', '.join(duplicates)}")
    return result


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"tgstack_gateway_accounts": tgstack_gateway_accounts}
