"""``tgstack loadtest``: the command-line front end of the load test."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tgstack.config import ConfigError, Settings

if TYPE_CHECKING:
    from tgstack.loadtest.plan import LoadPlan
    from tgstack.loadtest.result import LoadResult


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
        return value

    return parse


def add_parser(commands: Any, handler: Any) -> None:
    parser = commands.add_parser(
        "loadtest",
        help="drive synthetic posts through the whole pipeline and measure it end to end",
        description="Synthetic posts → gateway pipeline → PostgreSQL (PgBouncer) → Redis → "
        "RabbitMQ → pollers → signals, at a given rate; live progress, then a zero-loss check "
        "and result.json, summary.md and plot.png. Posts go to load-test channels of their own "
        "(-1009999999000 and below). With --through telegram they go through the local Telegram "
        "server (test tooling of the repository) to a real `tgstack gateway` instead.",
    )
    _add_path_options(parser)
    _add_load_options(parser)
    _add_run_options(parser)
    parser.set_defaults(handler=handler)


def _add_path_options(parser: argparse.ArgumentParser) -> None:
    """Which stack the posts go to and how they enter it."""
    parser.add_argument(
        "--local",
        action="store_true",
        help="start a whole local stack (durable PostgreSQL, PgBouncer, Redis + Sentinels, "
        "RabbitMQ) for the run instead of using the configured one",
    )
    parser.add_argument(
        "--through",
        choices=("in-process", "telegram"),
        default="in-process",
        help="how posts enter the stack: handed to the gateway pipeline in this process, or "
        "posted on the local Telegram server to a real `tgstack login` + `tgstack gateway` "
        "over MTProto (needs --local and a checkout's testing/ directory)",
    )
    parser.add_argument(
        "--telegram-server-dir",
        type=Path,
        help="with --through telegram: the checkout's testing/ directory (default: found from "
        "the installation or the current directory)",
    )


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    """The load offered and the pollers and batches that take it."""
    parser.add_argument("--rate", type=_positive(float), default=100.0, help="posts per second")
    parser.add_argument("--duration", type=_positive(float), default=30.0, help="seconds")
    parser.add_argument(
        "--count", type=_positive(int), help="send this many posts as fast as possible instead"
    )
    parser.add_argument("--channels", type=_positive(int), default=3)
    parser.add_argument(
        "--pollers",
        type=int,
        default=2,
        help="pollers to start for the run (0: rely on the pollers already running)",
    )
    parser.add_argument("--poller-kind", choices=("process", "thread"), default="process")
    parser.add_argument("--mode", choices=("queue", "poll", "hybrid"), default="hybrid")
    parser.add_argument(
        "--poll-interval", type=_positive(float), help="seconds between polls (poll/hybrid)"
    )
    parser.add_argument("--batch-size", type=_positive(int), help="gateway micro-batch size")
    parser.add_argument(
        "--batch-delay-ms", type=int, help="gateway micro-batch wait (default: the setting)"
    )
    parser.add_argument(
        "--prefetch", type=_positive(int), help="deliveries a poller holds (default: the setting)"
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The posts' mix, the run's phases and its result files."""
    parser.add_argument("--signal-share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds left out of steady")
    parser.add_argument("--drain-timeout", type=_positive(float), default=60.0)
    parser.add_argument("--label", default="loadtest")
    parser.add_argument("--out", type=Path, help="result directory (default loadtest-results/…)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--cleanup", action="store_true", help="delete the run's posts and signals afterwards"
    )
    parser.add_argument(
        "--base-dir", type=Path, help="with --local: where the servers live (default: temp)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tgstack.loadtest import machine
    from tgstack.loadtest.runner import run_loadtest
    from tgstack.loadtest.wire import find_server_dir

    wire = args.through == "telegram"
    if wire and not args.local:
        raise ConfigError(
            "--through telegram needs --local: the run starts its own Telegram server and "
            "gateway, which belong with a stack of their own, not a deployed one"
        )
    server_dir = find_server_dir(args.telegram_server_dir) if wire else None  # fail fast
    plan = _plan(args)
    if args.local:
        result = _run_on_local_stack(args, settings, plan, server_dir=server_dir, wire=wire)
    else:
        result = run_loadtest(settings, plan, server_versions=machine.stack_versions(settings))
    _print_result(result)
    return 0 if result.ok else 1


def _plan(args: argparse.Namespace) -> LoadPlan:
    from tgstack.loadtest.plan import LoadPlan
    from tgstack.loadtest.runner import default_out_dir

    return LoadPlan(
        rate=None if args.count else args.rate,
        duration=args.duration,
        count=args.count,
        channels=args.channels,
        pollers=args.pollers,
        poller_kind=args.poller_kind,
        mode=args.mode,
        poll_interval=args.poll_interval,
        signal_share=args.signal_share,
        seed=args.seed,
        batch_size=args.batch_size,
        batch_delay_ms=args.batch_delay_ms,
        prefetch=args.prefetch,
        warmup=args.warmup,
        drain_timeout=args.drain_timeout,
        label=args.label,
        out_dir=args.out or default_out_dir(args.label),
        plot=not args.no_plot,
        cleanup=args.cleanup,
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_on_local_stack(
    args: argparse.Namespace,
    settings: Settings,
    plan: LoadPlan,
    *,
    server_dir: Path | None,
    wire: bool,
) -> LoadResult:
    """Start a whole local stack (and with ``wire`` the Telegram server) and run on it."""
    from tgstack.loadtest import machine
    from tgstack.loadtest.local import local_stack
    from tgstack.loadtest.runner import run_loadtest
    from tgstack.loadtest.sender import Sender
    from tgstack.loadtest.wire import telegram_wire

    with local_stack(args.base_dir, progress=_say) as stack, contextlib.ExitStack() as more:
        local = stack.settings(log_level=settings.log_level, log_format=settings.log_format)
        sender: Sender | None = None
        if wire:
            sender = more.enter_context(
                telegram_wire(stack.base_dir / "telegram", server_dir=server_dir, progress=_say)
            )
        return run_loadtest(
            local,
            plan,
            server_versions=machine.local_server_versions()
            | {"postgresql_running": machine.stack_versions(local)["postgresql"]},
            sender=sender,
        )


def _print_result(result: LoadResult) -> None:
    """The verdict line, the Telegram server's evidence, the problems and the files."""
    data = result.as_dict()
    acc = data["accounting"]
    latency = data["latency"]["end_to_end_ms"]
    load = [" ".join(map(str, data[key])) for key in ("loadavg_before", "loadavg_after")]
    print(
        f"{'PASS' if result.ok else 'FAIL'} ({data['path']['through']}): {acc['sent']:,} sent "
        f"at {data['achieved_send_rate']:,.1f}/s, {acc['unique_rows']:,} stored, "
        f"{acc['signals']:,}/{acc['expected_signals']:,} signals, "
        f"{acc['duplicate_signals']} duplicate; end to end p50 {latency['p50']} ms, "
        f"p95 {latency['p95']} ms, p99 {latency['p99']} ms; "
        f"{data['end_to_end_rate']:,.0f} posts/s end to end; drained "
        f"{data['drain_seconds']:.2f} s after the last send; kept pace: "
        f"{'yes' if data['kept_pace'] else 'no'}; sustained (p99 ≤ "
        f"{data['sustained_p99_ms']:g} ms): {'yes' if data['sustained'] else 'no'}; "
        f"{_locks_line(data['locks'])}; loadavg {load[0]} → {load[1]}"
    )
    server = data["path"].get("server")
    if server is not None:
        print(
            f"through the Telegram server: {server['posts_in_run_channels']:,} posts in the run's "
            f"channels ({server['warmup_posts']} warm-up), {server['pushes']:,} updates pushed; "
            f"rows by source {data['path']['stored_by_source']}"
        )
    for problem in result.problems():
        print(f"problem: {problem}", file=sys.stderr)
    for name, path in result.files.items():
        print(f"{name}: {path}")


def _locks_line(locks: dict[str, Any] | None) -> str:
    if locks is None:
        return "deadlocks and lock waits not measured"
    deadlocks = "?" if locks["deadlocks"] is None else str(locks["deadlocks"])
    return f"deadlocks {deadlocks}, longest lock wait {locks['longest_lock_wait_ms']:g} ms"
