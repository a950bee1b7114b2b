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

from tgstack import __version__
from tgstack.config import ConfigError, Settings, load_settings
from tgstack.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    return parser


def _fail(message: str, code: int) -> int:
    print(f"tgstack: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env_file)
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
        log.debug("command failed", exc_info=True)
        return _fail(_describe(exc), EXIT_FAILURE)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, CommandError) else text


if __name__ == "__main__":
    sys.exit(main())
