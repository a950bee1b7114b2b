"""Command line of the local Telegram server: ``serve``, the control operations, ``bench``.

``python -m tgstack_testing.telegram serve --state-dir DIR`` runs the server; it writes
``DIR/server.json`` (ports, dc id, public key path) once it listens, and every control
subcommand finds the server through that file (or ``--control HOST:PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from .control import ControlClient, ControlError

SERVER_FILE = "server.json"


async def _serve(args: argparse.Namespace) -> None:
    from .control import start_control
    from .server import Server

    state_dir = Path(args.state_dir)
    server = Server(state_dir, args.host, args.port, args.dc_id)
    await server.start()
    control = await start_control(server, args.host, args.control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = {
        "host": args.host,
        "port": server.port,
        "control_port": control.sockets[0].getsockname()[1],
        "dc_id": server.dc_id,
        "public_key": str(state_dir / "server_public.pem"),
    }
    tmp = state_dir / (SERVER_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(state_dir / SERVER_FILE)
    print(json.dumps(info), flush=True)
    try:
        await stop.wait()
    finally:
        control.close()
        await server.stop()


def _client(args: argparse.Namespace) -> ControlClient:
    if args.control:
        host, _, port = args.control.rpartition(":")
        return ControlClient(host or "127.0.0.1", int(port))
    info = json.loads((Path(args.state_dir) / SERVER_FILE).read_text())
    return ControlClient(info["host"], info["control_port"])


def _channel(value: str) -> str | int:
    return int(value) if value.lstrip("-").isdigit() else value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tgstack_testing.telegram",
        description="A local Telegram server (MTProto 2.0 over loopback TCP) for tests and demos.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server until SIGTERM/SIGINT")
    serve.add_argument("--state-dir", required=True, help="state.json, RSA key, server.json")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="MTProto port (0: any free port)")
    serve.add_argument("--control-port", type=int, default=0, help="control port (0: any)")
    serve.add_argument("--dc-id", type=int, default=2, help="the DC id clients must use")
    serve.add_argument("-v", "--verbose", action="store_true")

    def control(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        where = command.add_mutually_exclusive_group(required=True)
        where.add_argument("--state-dir", help="the server's state directory (reads server.json)")
        where.add_argument("--control", help="HOST:PORT of the control interface")
        return command

    control("info", "ports, key path, accounts and channels")
    control("counters", "open connections, handshakes, pushes, requests per method")
    command = control("channel", "one channel: id, title, username, pts, last id, members")
    command.add_argument("channel", type=_channel, help="channel id or username")
    command = control("messages", "a channel's last posts still there, oldest first")
    command.add_argument("channel", type=_channel, help="channel id or username")
    command.add_argument("--limit", type=int, default=100)
    command = control("create-account", "add a user account (phone, name, username)")
    command.add_argument("phone")
    command.add_argument("--first-name", default="")
    command.add_argument("--username")
    command = control("create-channel", "add a broadcast channel")
    command.add_argument("title")
    command.add_argument("--username")
    command.add_argument("--member", action="append", default=[], help="phone or user id")
    command = control("ensure-channel", "the channel by --id (else --username), created when "
                      "missing, with every --member added (prints changed: true/false)")
    command.add_argument("title")
    command.add_argument("--id", type=int, help="bare channel id (the N of -100N)")
    command.add_argument("--username")
    command.add_argument("--member", action="append", default=[], help="phone or user id")
    command = control("post-file", "post the text of each line of a JSONL file (the replay "
                      "format: docs/replay-format.md), in order, a line with reply_to_msg_id "
                      "as a reply to that post of the file; - reads stdin")
    command.add_argument("channel", type=_channel, help="channel id or username")
    command.add_argument("file", type=argparse.FileType("r", encoding="utf-8"))
    command.add_argument("--keep-ids", action="store_true",
                         help="post with the file's message_id and date; lines whose id the "
                         "channel already has are skipped, so posting a file twice adds nothing")
    command = control("post", "post one message, or --count N at --rate per second")
    command.add_argument("channel", type=_channel, help="channel id or username")
    command.add_argument("text", help="the text; with --count, {n} is the post number")
    command.add_argument("--count", type=int)
    command.add_argument("--rate", type=float, default=0.0)
    command.add_argument("--reply-to", type=int, help="post as a reply to this message id")
    command = control("edit", "edit a message")
    command.add_argument("channel", type=_channel)
    command.add_argument("id", type=int)
    command.add_argument("text")
    command = control("delete", "delete messages")
    command.add_argument("channel", type=_channel)
    command.add_argument("ids", type=int, nargs="+")
    command = control("flood", "answer the next calls of a method with FLOOD_WAIT_X")
    command.add_argument("method", help="TL name, e.g. messages.getHistory")
    command.add_argument("--times", type=int, default=1)
    command.add_argument("--seconds", type=int, default=5)
    command.add_argument("--after", type=int, default=0, help="calls let through first")
    control("drop", "close every client connection")
    command = control("revoke", "revoke an account's auth keys (or one key)")
    command.add_argument("--phone")
    command.add_argument("--key-id", type=int)
    command.add_argument("--reason", default="AUTH_KEY_UNREGISTERED",
                         choices=["AUTH_KEY_UNREGISTERED", "SESSION_REVOKED"])
    command = control("gap", "open a pts gap in a channel")
    command.add_argument("channel", type=_channel)
    command.add_argument("--skip", type=int, default=0, help="don't push the next N events")
    command.add_argument("--bump", type=int, default=0, help="advance pts invisibly by N")
    command = control("updates-too-long", "push updatesTooLong to connected clients")
    command.add_argument("--phone")

    bench = sub.add_parser("bench", help="measure pushed messages per second to one client")
    bench.add_argument("--count", type=int, default=20000)
    return parser


def _reply_to(record: dict[str, Any], number: int, posted: dict[int, int] | None) -> int | None:
    """The id a line's post replies to: its ``reply_to_msg_id`` as is (`posted` None: the file's
    ids are the channel's), else the id the channel gave the earlier line with that
    ``message_id`` (`posted`: the file's id -> the channel's)."""
    wanted = record.get("reply_to_msg_id")
    if wanted is None:
        return None
    if isinstance(wanted, bool) or not isinstance(wanted, int):
        raise ControlError(f"line {number}: reply_to_msg_id must be an integer, got {wanted!r}")
    if posted is None:
        return wanted
    if wanted not in posted:
        raise ControlError(
            f"line {number}: reply_to_msg_id {wanted} is not the message_id of an earlier post "
            "of the file (without --keep-ids the channel numbers the posts)"
        )
    return posted[wanted]


def _post_file(
    client: ControlClient, channel: str | int, lines: TextIO, *, keep_ids: bool = False
) -> dict[str, Any]:
    """Each line's ``text`` (or ``caption``) posted as a new message; edit and delete lines and
    blank lines are skipped. Telegram gives the ids (the channel's next ones), unless
    `keep_ids`: then each post takes the line's ``message_id`` and ``date``, and lines at or
    below the channel's last id are already there. A line with ``reply_to_msg_id`` is posted as
    a reply: to that post of the channel with `keep_ids`, else to the post of the earlier line
    with that ``message_id``."""
    last_id = int(client.channel(channel)["last_msg_id"]) if keep_ids else 0
    ids: list[int] = []
    posted: dict[int, int] = {}  # the file's message_id -> the post's id in the channel
    skipped = present = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ControlError(f"line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ControlError(f"line {number}: not a JSON object")
        if record.get("event", "new") != "new":
            skipped += 1
            continue
        text = str(record.get("text") or record.get("caption") or "")
        reply_to = _reply_to(record, number, None if keep_ids else posted)
        if not keep_ids:
            ids.append(int(client.post(channel, text, reply_to=reply_to)["id"]))
            if isinstance(record.get("message_id"), int):
                posted[record["message_id"]] = ids[-1]
            continue
        try:
            message_id = int(record["message_id"])
            date = int(datetime.fromisoformat(record["date"]).timestamp())
        except (KeyError, TypeError, ValueError) as error:
            raise ControlError(f"line {number}: no usable message_id and date ({error})") from None
        if message_id <= last_id:
            present += 1
            continue
        ids.append(int(client.post(channel, text, date, message_id, reply_to)["id"]))
        last_id = message_id
    return {"posted": len(ids), "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None, "skipped": skipped, "already_there": present}


def _run_control(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        match args.command:
            case "info":
                return client.info()
            case "counters":
                return client.counters()
            case "channel":
                return client.channel(args.channel)
            case "messages":
                return client.messages(args.channel, args.limit)
            case "create-account":
                return client.create_account(args.phone, args.first_name, args.username)
            case "create-channel":
                return client.create_channel(args.title, args.username, args.member)
            case "ensure-channel":
                return client.ensure_channel(args.title, args.username, args.member, args.id)
            case "post-file":
                return _post_file(client, args.channel, args.file, keep_ids=args.keep_ids)
            case "post" if args.count:
                if args.reply_to is not None:
                    raise ControlError("--reply-to posts one message: leave out --count")
                return client.post_many(args.channel, args.count, args.rate, args.text)
            case "post":
                return client.post(args.channel, args.text, reply_to=args.reply_to)
            case "edit":
                return client.edit(args.channel, args.id, args.text)
            case "delete":
                return client.delete(args.channel, args.ids)
            case "flood":
                return client.flood(args.method, args.times, args.seconds, args.after)
            case "drop":
                return client.drop_connections()
            case "revoke":
                return client.revoke(args.phone, args.key_id, args.reason)
            case "gap":
                return client.gap(args.channel, args.skip, args.bump)
            case "updates-too-long":
                return client.updates_too_long(args.phone)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
        asyncio.run(_serve(args))
        return 0
    if args.command == "bench":
        from .bench import run

        return run(args.count)
    try:
        print(json.dumps(_run_control(args), indent=2))
    except ControlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
