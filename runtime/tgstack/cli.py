"""The ``tgstack`` command line.

Exit status: 0 success, 1 a runtime failure (server unreachable, operation failed),
2 a usage or configuration error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tgstack import __version__
from tgstack.config import ConfigError, Settings, load_settings
from tgstack.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus stops a restart loop on it

log = logging.getLogger("tgstack.cli")

Handler = Callable[[argparse.Namespace, Settings], int]


class CommandError(RuntimeError):
    """A command failed for a reason the operator can act on; printed as one line."""


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    _print_json(settings.redacted())
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    dsn = settings.migration_database_url()
    from tgstack.migrate import apply_migrations, migration_status

    if args.status:
        states = migration_status(dsn)
        if args.format == "json":
            _print_json(
                [
                    {"name": s.name, "applied_at": s.applied_at, "checksum": s.checksum}
                    for s in states
                ]
            )
        else:
            for state in states:
                when = state.applied_at.isoformat() if state.applied_at else "pending"
                print(f"{state.name:40} {when}")
        return EXIT_OK
    applied = apply_migrations(dsn, log=lambda line: print(line, file=sys.stderr))
    print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
    return EXIT_OK


def cmd_aggregates_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.db import Database

    with Database(settings.require_database_url(), min_size=0, max_size=1) as db:
        db.refresh_aggregates()
    print("aggregates refreshed")
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.db import Database

    with Database(settings.require_database_url(), min_size=0, max_size=1) as db:
        removed = db.cleanup_old(args.days)
    print(f"removed {removed} finished message(s) older than {args.days} day(s)")
    return EXIT_OK


def cmd_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.gateway.service import run_gateway
    from tgstack.gateway.telethon_source import GatewayFatal

    try:
        run_gateway(settings)
    except GatewayFatal as exc:
        print(f"tgstack: fatal: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.gateway.replay import ReplayFileError
    from tgstack.gateway.service import run_replay

    def progress(read: int, pending: int) -> None:
        print(f"replay: {read} events read, {pending} waiting to commit", file=sys.stderr)

    try:
        summary = run_replay(settings, args.file, rate=args.rate, progress=progress)
    except ReplayFileError as exc:
        raise CommandError(str(exc)) from exc
    for rejection in summary.rejections:
        print(f"rejected {rejection}", file=sys.stderr)
    _print_json(summary.as_dict())
    return EXIT_OK


def cmd_outbox_flush(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.gateway.service import flush_outbox

    result = flush_outbox(settings)
    _print_json(result)
    return EXIT_OK if result["failed"] == 0 else EXIT_FAILURE


def cmd_synthetic(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.gateway.synthetic import DEFAULT_CHANNELS, generate, to_jsonl_line

    channels = settings.channels or list(DEFAULT_CHANNELS)
    out = sys.stdout
    for record in generate(
        args.count,
        channels=channels,
        seed=args.seed,
        signal_share=args.signal_share,
        first_message_id=args.first_id,
    ):
        out.write(to_jsonl_line(record) + "\n")
    return EXIT_OK


def cmd_poller(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.poller.service import run_poller

    run_poller(settings, args.mode)
    return EXIT_OK


def cmd_signals_parse(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.signals import explain, parse_signal

    text = sys.stdin.read()
    if args.explain:
        shown = explain(text)
        _print_json({"signal": shown["signal"], "matches": shown["matches"]})
        return EXIT_OK
    signal = parse_signal(text)
    print(json.dumps(signal.to_json_dict() if signal else None, ensure_ascii=False))
    return EXIT_OK


def cmd_signals_classify(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.signals import classify, explain

    text = sys.stdin.read()
    if args.explain:
        shown = explain(text)
        _print_json({"classification": shown["classification"], "matches": shown["matches"]})
        return EXIT_OK
    print(json.dumps(classify(text).to_dict(), ensure_ascii=False))
    return EXIT_OK


def cmd_signals_review(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack import signals_review

    found = signals_review.open_reviews(
        settings.require_database_url(), limit=args.limit, channel_id=args.channel
    )
    if not found.reviews:
        print(signals_review.EMPTY, file=sys.stderr if args.json else sys.stdout)
        return EXIT_OK
    if args.json:
        for review in found.reviews:
            print(json.dumps(review.to_json_dict(), ensure_ascii=False))
    else:
        for line in signals_review.table(found.reviews):
            print(line)
    if found.more:
        print(
            f"(the newest {len(found.reviews)} shown; more need review: raise --limit"
            " or narrow with --channel, or page through GET /v1/signals/review)",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_login(args: argparse.Namespace, settings: Settings) -> int:
    from telethon import errors

    from tgstack.gateway.login import LoginAnswers, LoginError, run_login

    try:
        report = run_login(settings, LoginAnswers.from_environment(args.phone, args.code))
    except (LoginError, errors.RPCError) as exc:
        print(f"tgstack: login failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    first, *warnings = report.lines()
    print(first)
    for line in warnings:
        print(line, file=sys.stderr)
    return EXIT_OK


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.api.server import run_api

    if args.port is not None:
        settings = settings.model_copy(update={"api_port": args.port})
    if args.bind is not None:
        settings = settings.model_copy(update={"api_bind": args.bind})
    run_api(settings)
    return EXIT_OK


def cmd_loadtest(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.loadtest.command import run

    return run(args, settings)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def _share(text: str) -> float:
    value = _positive_float(text) if text not in ("0", "0.0") else 0.0
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _channel_id(text: str) -> int:
    from tgstack.models import InvalidMessage, validate_channel_id

    try:
        return validate_channel_id(text, field_name="ID")
    except InvalidMessage as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("ID ")) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgstack",
        description="Telegram channel ingestion stack: gateway, poller, API and operations.",
    )
    parser.add_argument("--version", action="version", version=f"tgstack {__version__}")
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="read settings from this env file (mode 0600) as well as the environment "
        "(default: $TGSTACK_ENV_FILE)",
    )
    parser.add_argument(
        "--account",
        metavar="NAME",
        help="a gateway account's settings on top of the env file: gateway-NAME.env beside it "
        "(its channels, session and port), e.g. `tgstack --account second login`",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_database_parsers(commands)
    _add_ingest_parsers(commands)
    _add_service_parsers(commands)

    from tgstack.loadtest.command import add_parser as add_loadtest_parser

    add_loadtest_parser(commands, cmd_loadtest)

    _add_signals_parser(commands)

    from tgstack.legacy.cli import add_legacy_commands

    add_legacy_commands(commands)
    return parser


def _add_database_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """config, migrate, aggregates, cleanup: the settings and the database's upkeep."""
    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate the settings and print them with secrets masked"
    )
    check.set_defaults(handler=cmd_config_check)

    migrate = commands.add_parser(
        "migrate", help="apply pending SQL migrations (each once, under an advisory lock)"
    )
    migrate.add_argument("--status", action="store_true", help="list applied and pending")
    migrate.add_argument("--format", choices=("text", "json"), default="text")
    migrate.set_defaults(handler=cmd_migrate)

    aggregates = commands.add_parser("aggregates", help="hourly/daily message aggregates")
    aggregates_commands = aggregates.add_subparsers(dest="aggregates_command", required=True)
    refresh = aggregates_commands.add_parser(
        "refresh", help="refresh messages_hourly and messages_daily (plain PostgreSQL only)"
    )
    refresh.set_defaults(handler=cmd_aggregates_refresh)

    cleanup = commands.add_parser(
        "cleanup", help="delete finished messages older than a number of days"
    )
    cleanup.add_argument("--days", type=_positive_int, default=90)
    cleanup.set_defaults(handler=cmd_cleanup)


def _add_ingest_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """login, gateway, replay, outbox, synthetic: how posts come in."""
    login = commands.add_parser(
        "login",
        help="create the Telegram session (asks for phone, code and 2FA password unless given)",
        description="Sign the Telegram account in once and store its channels' access hashes "
        "in the session. Non-interactive with --phone and --code (or TGSTACK_LOGIN_PHONE, "
        "TGSTACK_LOGIN_CODE) and TGSTACK_LOGIN_PASSWORD for two-step verification.",
    )
    login.add_argument("--phone", help="the account's phone number, international format")
    login.add_argument("--code", help="the login code Telegram sent (the test server's fixed one)")
    login.set_defaults(handler=cmd_login)

    gateway = commands.add_parser(
        "gateway", help="run the MTProto gateway (non-interactive; needs a session from login)"
    )
    gateway.set_defaults(handler=cmd_gateway)

    replay = commands.add_parser(
        "replay", help="feed a JSONL file of channel events through the gateway pipeline"
    )
    replay.add_argument(
        "file", type=Path, help="one JSON object a line (see docs/replay-format.md)"
    )
    replay.add_argument(
        "--rate", type=_positive_float, help="events per second (default: as fast as possible)"
    )
    replay.set_defaults(handler=cmd_replay)

    outbox = commands.add_parser("outbox", help="the RabbitMQ outbox kept in PostgreSQL")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    flush = outbox_commands.add_parser(
        "flush", help="publish every stored message RabbitMQ has not confirmed"
    )
    flush.set_defaults(handler=cmd_outbox_flush)

    synthetic = commands.add_parser(
        "synthetic", help="write realistic synthetic channel posts as replay JSONL to stdout"
    )
    synthetic.add_argument("--count", type=_positive_int, default=1000)
    synthetic.add_argument("--seed", type=int, default=1)
    synthetic.add_argument("--signal-share", type=_share, default=0.3)
    synthetic.add_argument("--first-id", type=_positive_int, default=1)
    synthetic.set_defaults(handler=cmd_synthetic)


def _add_service_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """api, poller: the long-running services that read what came in."""
    api = commands.add_parser(
        "api", help="serve the Gateway API (messages, channels, signals; default 127.0.0.1:4010)"
    )
    api.add_argument("--bind", help="listen address (default: $TGSTACK_API_BIND)")
    api.add_argument(
        "--port", type=_port, help="listen port, 0 for any free one (default: $TGSTACK_API_PORT)"
    )
    api.set_defaults(handler=cmd_api)

    poller = commands.add_parser(
        "poller", help="run the TP Capital poller (channel posts → trading signals)"
    )
    poller.add_argument(
        "--mode",
        choices=("queue", "poll", "hybrid"),
        default="hybrid",
        help="queue: RabbitMQ only; poll: PostgreSQL/Redis polling; hybrid: queue + 30 s poll",
    )
    poller.set_defaults(handler=cmd_poller)


def _add_signals_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    signals = commands.add_parser("signals", help="trading-signal tools")
    signals_commands = signals.add_subparsers(dest="signals_command", required=True)
    explain_help = "also show which words of the post matched which field or event"
    parse = signals_commands.add_parser(
        "parse", help="parse a post from stdin; print the signal as JSON, or null"
    )
    parse.add_argument(
        "--explain",
        action="store_true",
        help=explain_help + ' (prints {"signal": …, "matches": […]})',
    )
    parse.set_defaults(handler=cmd_signals_parse)
    classify = signals_commands.add_parser(
        "classify",
        help="classify a post from stdin: one JSON object whose kind is signal, target_hit, "
        "stop_moved, stopped, closed, cancelled, needs_review or chatter, with the fields "
        "that apply",
    )
    classify.add_argument(
        "--explain",
        action="store_true",
        help=explain_help + ' (prints {"classification": …, "matches": […]})',
    )
    classify.set_defaults(handler=cmd_signals_classify)
    review = signals_commands.add_parser(
        "review",
        help="list the posts that look like a signal but could not be read (no price), "
        "newest first, from the database (as GET /v1/signals/review)",
    )
    review.add_argument(
        "--limit", type=_positive_int, default=50, help="at most this many (default 50)"
    )
    review.add_argument(
        "--channel",
        type=_channel_id,
        metavar="ID",
        help="only this channel (marked id, e.g. -1001649127710)",
    )
    review.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (id, channel_id, message_id, telegram_date, asset, "
        "missing, raw_text) instead of a table",
    )
    review.set_defaults(handler=cmd_signals_review)


def _fail(message: str, code: int) -> int:
    print(f"tgstack: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env_file, args.account)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        log.debug("command_failed", exc_info=True)
        return _fail(_describe(exc), EXIT_FAILURE)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, CommandError) else text


if __name__ == "__main__":
    sys.exit(main())
