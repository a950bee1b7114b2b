"""``tgstack legacy …``: import, verify, fingerprint, carry back and seed the legacy table.

``seed`` is for tests and the sandbox: its fixture rows come from the test tooling
(``tgstack_testing.legacy``, in a checkout, not in the wheel).

The legacy database's DSN comes from ``$TGSTACK_LEGACY_DATABASE_URL`` (never a command-line
argument: it holds a password); the new database is the migration DSN of the settings
(``TGSTACK_DATABASE_ADMIN_URL``, else ``TGSTACK_DATABASE_URL``) and must reach PostgreSQL
directly. Every command prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tgstack.config import ConfigError, Settings
from tgstack.testing_tools import require_test_tooling

LEGACY_URL_VARIABLE = "TGSTACK_LEGACY_DATABASE_URL"
EXIT_OK = 0
EXIT_FAILURE = 1


def _legacy_dsn() -> str:
    value = os.environ.get(LEGACY_URL_VARIABLE, "").strip()
    if not value:
        raise ConfigError(
            f"{LEGACY_URL_VARIABLE}: set it to the DSN of the old shared database "
            "(e.g. host=127.0.0.1 port=5433 dbname=... user=... password=...)"
        )
    return value


def _print(data: object) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _write_json(path: Path | None, data: object) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=str, ensure_ascii=False)
        handle.write("\n")


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.legacy.importer import import_legacy

    def progress(imported: int, present: int) -> None:
        print(f"legacy import: {imported} imported, {present} already present", file=sys.stderr)

    summary = import_legacy(
        _legacy_dsn(),
        settings.migration_database_url(),
        schema=args.schema,
        batch_size=args.batch_size,
        progress=progress if args.progress else None,
    ).as_dict()
    _write_json(args.output, summary)
    if len(summary["rejections"]) > args.show_rejections:
        summary["rejections"] = summary["rejections"][: args.show_rejections]
        summary["rejections_truncated"] = True
    _print(summary)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.legacy.verify import verify_migration

    verification = verify_migration(
        _legacy_dsn(), settings.migration_database_url(), schema=args.schema
    )
    report = verification.as_dict()
    report["max_rejected_rows"] = args.max_rejected
    report["ok"] = verification.ok and verification.rejected_rows <= args.max_rejected
    _write_json(args.output, report)
    _print(report)
    return EXIT_OK if report["ok"] else EXIT_FAILURE


def cmd_fingerprint(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.legacy.verify import fingerprint

    report = fingerprint(
        _legacy_dsn(), schema=args.schema, exclude_carried_from=args.exclude_carried_from
    )
    _write_json(args.output, report)
    _print(report)
    return EXIT_OK


def cmd_carry_back(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.legacy.carry import carry_back

    report = carry_back(
        settings.migration_database_url(),
        _legacy_dsn(),
        migration_id=args.migration_id,
        schema=args.schema,
    )
    _write_json(args.output, report)
    _print(report)
    return EXIT_OK


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    require_test_tooling("tgstack legacy seed")
    from tgstack_testing.legacy.seed import DEFAULT_LEGACY_CHANNELS, seed_legacy, seed_sql

    channels = list(DEFAULT_LEGACY_CHANNELS)
    if args.channels > len(channels):
        channels += [-1001300000000 - i for i in range(args.channels - len(channels))]
    if args.sql:
        lines, summary = seed_sql(
            args.posts,
            channels=channels[: args.channels],
            seed=args.seed,
            schema=args.schema,
            days=args.days,
        )
        sys.stdout.writelines(lines)
        print(json.dumps(summary.as_dict(), default=str), file=sys.stderr)
        return EXIT_OK
    summary = seed_legacy(
        _legacy_dsn(),
        args.posts,
        channels=channels[: args.channels],
        seed=args.seed,
        schema=args.schema,
        days=args.days,
    )
    _print(summary.as_dict())
    return EXIT_OK


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _at_least_one(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


Handler = Callable[[argparse.Namespace, Settings], int]


def add_legacy_commands(commands: Any) -> None:
    """Add ``legacy`` and its subcommands to the CLI's subparsers."""
    legacy = commands.add_parser(
        "legacy",
        help="the old shared database's telegram_gateway table "
        f"(DSN in ${LEGACY_URL_VARIABLE}): import, verify, fingerprint, carry back, seed",
    )
    sub = legacy.add_subparsers(dest="legacy_command", required=True)
    _add_migration_commands(sub)
    _add_rollback_commands(sub)


def _common(parser: argparse.ArgumentParser, handler: Handler, output: bool = True) -> None:
    """The options every legacy subcommand shares: --schema, --output; its handler."""
    parser.add_argument(
        "--schema", default="telegram_gateway", help="legacy schema (telegram_gateway)"
    )
    if output:
        parser.add_argument(
            "--output", type=Path, help="also write the JSON document to this file (0600)"
        )
    parser.set_defaults(handler=handler)


def _add_migration_commands(sub: Any) -> None:
    """import and verify: the migration's way forward."""
    imp = sub.add_parser(
        "import", help="import legacy posts into the new schema (idempotent: reruns add nothing)"
    )
    imp.add_argument("--batch-size", type=_at_least_one, default=2000)
    imp.add_argument("--progress", action="store_true", help="progress lines on stderr")
    imp.add_argument(
        "--show-rejections", type=_count, default=50, help="rejections printed (all in --output)"
    )
    _common(imp, cmd_import)

    ver = sub.add_parser(
        "verify",
        help="per-channel counts and checksums, legacy vs new; exit 1 on any difference",
    )
    ver.add_argument(
        "--max-rejected",
        type=_count,
        default=0,
        help="legacy rows that may be left out (bad channel or message id) and still pass",
    )
    _common(ver, cmd_verify)


def _add_rollback_commands(sub: Any) -> None:
    """fingerprint, carry-back, seed: the rollback's checks and the test data."""
    fin = sub.add_parser(
        "fingerprint", help="row counts and checksums of the legacy table per channel id"
    )
    fin.add_argument(
        "--exclude-carried-from",
        metavar="MIGRATION_ID",
        help="leave out rows the rollback of this migration carried back",
    )
    _common(fin, cmd_fingerprint)

    carry = sub.add_parser(
        "carry-back",
        help="copy posts the new stack stored that the legacy table lacks into it (rollback)",
    )
    carry.add_argument("--migration-id", required=True, help="marks the carried rows")
    _common(carry, cmd_carry_back)

    seed = sub.add_parser(
        "seed", help="create the legacy table if missing and fill it with realistic rows (tests)"
    )
    seed.add_argument("--posts", type=_at_least_one, default=30000)
    seed.add_argument("--channels", type=_at_least_one, default=5)
    seed.add_argument("--seed", type=int, default=1)
    seed.add_argument("--days", type=_at_least_one, default=120)
    seed.add_argument(
        "--sql",
        action="store_true",
        help="write a psql script (DDL + COPY) to stdout instead of loading a database; "
        "the figures go to stderr",
    )
    _common(seed, cmd_seed, output=False)
