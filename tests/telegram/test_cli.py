"""The command line: its help, and control subcommands against a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import REPO, TelegramServerProcess


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "testing")}
    return subprocess.run([sys.executable, "-m", "tgstack_testing.telegram", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_serve_and_the_control_subcommands() -> None:
    result = cli("--help")

    assert result.returncode == 0
    for command in ("serve", "create-channel", "post", "flood", "drop", "revoke", "gap", "bench"):
        assert command in result.stdout


def test_control_subcommands_drive_the_running_server(tg_server: TelegramServerProcess) -> None:
    where = ("--state-dir", str(tg_server.state_dir))

    created = json.loads(cli("create-channel", "Signals", "--username", "signals",
                             "--member", "+15550001", *where).stdout)
    posted = json.loads(cli("post", "signals", "n={n}", "--count", "3", *where).stdout)
    info = json.loads(cli("info", *where).stdout)
    missing = cli("edit", "signals", "99", "nope", *where)

    assert posted["last_id"] == 3
    assert info["channels"][0] | {"members": None} == {
        "id": created["id"], "title": "Signals", "username": "signals", "pts": 4,
        "last_msg_id": 3, "messages": 3, "members": None,
    }
    assert missing.returncode == 1
    assert "no message 99" in missing.stderr
