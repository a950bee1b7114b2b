"""The runtime role's gateway accounts filter: defaults, and every inventory mistake refused
before anything is written (roles/tgstack_runtime/filter_plugins/tgstack_accounts.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PLUGIN = (
    Path(__file__).resolve().parents[2]
    / "roles" / "tgstack_runtime" / "filter_plugins" / "tgstack_accounts.py"
)  # fmt: skip
HOME = "/var/lib/tgstack"


def _plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tgstack_accounts", PLUGIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accounts_filter = _plugin()


def normalise(accounts: list[Any] | None, channels: list[int] | None = None) -> list[Any]:
    return list(
        accounts_filter.tgstack_gateway_accounts(
            accounts, channels or [], 4006, f"{HOME}/gateway.session", HOME, "+15550100001"
        )
    )


def test_no_accounts_is_one_main_account_with_the_single_account_settings() -> None:
    assert normalise([], [-1001649127710]) == [{
        "name": "main", "channels": [-1001649127710], "port": 4006,
        "session": f"{HOME}/gateway.session", "phone": "+15550100001",
    }]  # fmt: skip


def test_named_accounts_get_their_own_session_and_keep_their_order() -> None:
    found = normalise([
        {"name": "main", "channels": ["-1001000000001"], "port": 4006},
        {"name": "second", "channels": [-1001000000002], "port": 4016, "phone": "+15550100002"},
    ])  # fmt: skip

    assert [(a["name"], a["channels"], a["session"], a["phone"]) for a in found] == [
        ("main", [-1001000000001], f"{HOME}/gateway.session", "+15550100001"),
        ("second", [-1001000000002], f"{HOME}/gateway-second.session", "+15550100002"),
    ]


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        ([{"name": "Main", "port": 4006}], "must be lower-case letters"),
        ([{"name": "a/b", "port": 4006}], "must be lower-case letters"),
        ([{"name": "a", "port": 4006, "chanels": []}], "unknown keys"),
        ([{"name": "a", "port": 0}], "needs a port"),
        ([{"name": "a", "port": "x"}], "is not a number"),
        ([{"name": "a", "port": 4006, "channels": [1649127710]}], "is not a marked id"),
        ([{"name": "a", "port": 4006, "channels": ["x"]}], "is not an integer"),
        ([{"name": "a", "port": 4006}, {"name": "a", "port": 4016}], "share a name: a"),
        ([{"name": "a", "port": 4006}, {"name": "b", "port": 4006}], "share a port: 4006"),
        (
            [{"name": "a", "port": 4006, "session": "/s"},
             {"name": "b", "port": 4016, "session": "/s"}],
            "share a session: /s",
        ),
        (
            [{"name": "a", "port": 4006, "channels": [-1001000000001]},
             {"name": "b", "port": 4016, "channels": [-1001000000001]}],
            "channel -1001000000001 is in accounts a and b",
        ),
        (["main"], "is not a mapping"),
    ],
)
def test_inventory_mistakes_are_refused_with_the_account_named(
    accounts: list[Any], message: str
) -> None:
    with pytest.raises(accounts_filter.AccountError, match=message):
        normalise(accounts)
