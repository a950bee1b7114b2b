"""The command line: its help, and control subcommands against a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_ensure_channel_creates_once_with_the_given_id_and_adds_members_on_replay(
    tg_server: TelegramServerProcess,
) -> None:
    where = ("--state-dir", str(tg_server.state_dir))
    args = ("ensure-channel", "Sample", "--id", "1649127710", "--username", "sample", *where)

    first = json.loads(cli(*args, "--member", "+15550001").stdout)
    replay = json.loads(cli(*args, "--member", "+15550001").stdout)
    widened = json.loads(cli(*args, "--member", "+15550001", "--member", "+15550002").stdout)
    clash = cli("ensure-channel", "Other", "--id", "1649127710", "--username", "other", *where)

    assert (first["id"], first["changed"], len(first["members"])) == (1649127710, True, 1)
    assert (replay["id"], replay["changed"], replay["members"]) == (1649127710, False,
                                                                   first["members"])
    assert (widened["changed"], len(widened["members"])) == (True, 2)
    assert clash.returncode == 1
    assert "is @sample, not @other" in clash.stderr
    assert [c["id"] for c in json.loads(cli("info", *where).stdout)["channels"]] == [1649127710]


def test_post_file_posts_each_new_line_of_a_replay_file_in_order(
    tg_server: TelegramServerProcess, tmp_path: Path
) -> None:
    where = ("--state-dir", str(tg_server.state_dir))
    cli("ensure-channel", "Sample", "--username", "sample", *where)
    lines = [
        {"channel_id": -1001, "message_id": 7, "date": "2026-11-02T09:07:00-03:00", "text": "a"},
        {"event": "edit", "channel_id": -1001, "message_id": 7, "text": "a2"},
        {"channel_id": -1001, "message_id": 8, "date": "2026-11-02T09:08:00-03:00",
         "caption": "b", "media_type": "photo"},
    ]
    replay_file = tmp_path / "sample.jsonl"
    replay_file.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{not json\n')

    posted = json.loads(cli("post-file", "sample", str(replay_file), *where).stdout)
    failed = cli("post-file", "sample", str(broken), *where)
    with tg_server.control() as control:
        texts = [m["text"] for m in control.messages("sample")]

    assert posted == {"posted": 2, "first_id": 1, "last_id": 2, "skipped": 1,
                      "already_there": 0}
    assert failed.returncode == 1
    assert "line 2: not JSON" in failed.stderr
    assert texts == ["a", "b", "fine"]


def test_post_file_with_kept_ids_seeds_the_files_history_once(
    tg_server: TelegramServerProcess, tmp_path: Path
) -> None:
    where = ("--state-dir", str(tg_server.state_dir))
    cli("ensure-channel", "Sample", "--id", "1649127710", *where)
    lines = [
        {"channel_id": -1001649127710, "message_id": 1001, "date": "2026-11-02T09:07:00-03:00",
         "text": "first"},
        {"channel_id": -1001649127710, "message_id": 1005, "date": "2026-11-02T09:14:00-03:00",
         "text": "second"},
    ]
    replay_file = tmp_path / "sample.jsonl"
    replay_file.write_text("".join(json.dumps(line) + "\n" for line in lines))

    first = json.loads(cli("post-file", "-1001649127710", str(replay_file), "--keep-ids",
                           *where).stdout)
    again = json.loads(cli("post-file", "1649127710", str(replay_file), "--keep-ids",
                           *where).stdout)
    history = json.loads(cli("messages", "1649127710", *where).stdout)
    with tg_server.control() as control:
        after = control.post(1649127710, "live")

    assert first == {"posted": 2, "first_id": 1001, "last_id": 1005, "skipped": 0,
                     "already_there": 0}
    assert again == {"posted": 0, "first_id": None, "last_id": None, "skipped": 0,
                     "already_there": 2}
    assert [(m["id"], m["date"], m["text"]) for m in history] == [
        (1001, 1793621220, "first"), (1005, 1793621640, "second")]
    assert after["id"] == 1006


def test_post_and_post_file_make_replies_to_posts_of_the_same_channel(
    tg_server: TelegramServerProcess, tmp_path: Path
) -> None:
    where = ("--state-dir", str(tg_server.state_dir))
    cli("ensure-channel", "Sample", "--id", "1649127710", "--username", "sample", *where)
    lines = [
        {"channel_id": -1001649127710, "message_id": 1001, "date": "2026-11-02T09:07:00-03:00",
         "text": "signal"},
        {"channel_id": -1001649127710, "message_id": 1002, "date": "2026-11-02T09:14:00-03:00",
         "text": "Alvo 1 atingido", "reply_to_msg_id": 1001},
    ]
    replay_file = tmp_path / "replies.jsonl"
    replay_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps(lines[1] | {"reply_to_msg_id": 999}) + "\n")

    kept = json.loads(cli("post-file", "sample", str(replay_file), "--keep-ids", *where).stdout)
    renumbered = json.loads(cli("post-file", "sample", str(replay_file), *where).stdout)
    one = json.loads(cli("post", "sample", "Alvo 2 atingido", "--reply-to", "1001",
                         *where).stdout)
    refused = cli("post-file", "sample", str(unknown), *where)
    history = json.loads(cli("messages", "sample", *where).stdout)

    assert (kept["posted"], renumbered["posted"]) == (2, 2)
    assert one["reply_to"] == 1001
    assert [(m["id"], m["text"], m["reply_to"]) for m in history] == [
        (1001, "signal", None), (1002, "Alvo 1 atingido", 1001),
        (1003, "signal", None), (1004, "Alvo 1 atingido", 1003),  # the file's 1001 is now 1003
        (1005, "Alvo 2 atingido", 1001),
    ]
    assert refused.returncode == 1
    assert "line 1: reply_to_msg_id 999 is not the message_id of an earlier post" in (
        refused.stderr)
