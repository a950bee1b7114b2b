"""A run's result files: ``result.json`` (everything), ``summary.md`` and ``plot.png``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tgstack.loadtest.result import LoadResult


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _path(path: dict[str, Any]) -> str:
    """How the posts entered the stack, and the evidence when they went through Telegram."""
    server = path.get("server")
    if path["through"] != "telegram" or server is None:
        return "Posts entered the gateway pipeline in the load test's process (no Telegram)."
    return (
        "Posts went through the local Telegram server to a real `tgstack gateway` over MTProto: "
        f"the server holds {server['posts_in_run_channels']:,} posts in the run's channels "
        f"({server['warmup_posts']} warm-up) and pushed {server['pushes']:,} updates; stored "
        f"rows by source: {path['stored_by_source']}; the gateway exited with "
        f"{path['gateway_exit_code']}. Sent time = the server's publish time."
    )


def _sustained(data: dict[str, Any]) -> str:
    if data["sustained"]:
        return "yes"
    return "no: " + "; ".join(data["not_sustained_because"])


def _locks(locks: dict[str, Any] | None) -> list[str]:
    """The deadlocks and the longest lock wait of the run (``tgstack.loadtest.locks``)."""
    if locks is None:
        return ["Deadlocks and lock waits: not measured (see the log)."]
    deadlocks = "–" if locks["deadlocks"] is None else f"{locks['deadlocks']:,}"
    return [
        f"Deadlocks (pg_stat_database, during the run): {deadlocks}; longest lock wait "
        f"{locks['longest_lock_wait_ms']:,.1f} ms ({locks['lock_waits_seen']:,} waits seen in "
        f"{locks['samples']:,} samples of pg_locks, every {locks['sample_interval_ms']:g} ms)."
    ]


def markdown(data: dict[str, Any]) -> str:
    """The Markdown summary of a result as ``LoadResult.as_dict`` gives it."""
    lines = [
        *_heading(data),
        *_throughput(data),
        *_latency(data["latency"]),
        "",
        *_locks(data.get("locks")),
        *_degradation(data["latency"]),
        *_zero_loss(data["accounting"]),
        *_recent_window(data.get("cache")),
        *_resources(data["resources"]),
    ]
    if data["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in data["problems"]]
    if data["files"].get("plot"):
        lines += ["", f"![throughput and latency]({Path(data['files']['plot']).name})"]
    return "\n".join(lines) + "\n"


def _heading(data: dict[str, Any]) -> list[str]:
    """The title, what was offered, the machine and the path the posts took."""
    plan = data["plan"]
    machine = data["machine"]
    offered = f"{plan['rate']:g} posts/s" if plan["rate"] else "as fast as possible"
    return [
        f"# Load test `{data['label']}` — {'PASS' if data['ok'] else 'FAIL'}",
        "",
        f"Started {data['started_at']}: {data['sent']:,} posts offered at {offered} over "
        f"{plan['channels']} channel(s); {plan['pollers']} {plan['poller_kind']} poller(s) in "
        f"`{plan['mode']}` mode.",
        "",
        f"Load average before / after: {' '.join(map(str, data['loadavg_before']))} / "
        f"{' '.join(map(str, data['loadavg_after']))} "
        f"(machine: {machine['nproc']} CPUs, {machine['cpu_model']}).",
        "",
        _path(data.get("path") or {"through": "in-process"}),
    ]


def _throughput(data: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Throughput",
        "",
        "| figure | value |",
        "|---|---|",
        f"| posts sent | {data['sent']:,} in {data['send_seconds']:.1f} s |",
        f"| achieved send rate | {data['achieved_send_rate']:,.1f} posts/s |",
        f"| end-to-end rate (first sent → last finished) | {data['end_to_end_rate']:,.1f} "
        "posts/s |",
        f"| drained after the last send | {data['drain_seconds']:.2f} s |",
        f"| kept pace | {'yes' if data['kept_pace'] else 'no'}"
        f"{' (stopped early)' if data['aborted'] else ''} |",
        f"| sustained (zero loss, kept pace, end-to-end p99 ≤ {data['sustained_p99_ms']:g} ms) "
        f"| {_sustained(data)} |",
        f"| sender behind schedule (max) | {data['max_sender_lag_s']:.3f} s |",
        f"| RabbitMQ ready messages (max) | {data['max_queue_ready'] if data['max_queue_ready'] is not None else '–'} |",  # noqa: E501
    ]


def _latency(lat: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Latency (ms, steady state)",
        "",
        "| path | n | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("sent → signal/mark committed (end to end)", "end_to_end_ms"),
        ("… signal posts only", "end_to_end_signals_ms"),
        ("sent → row committed (gateway)", "ingest_ms"),
        ("sent → broker confirmed (marked published)", "publish_confirmed_ms"),
    ):
        s = lat[key]
        lines.append(
            f"| {name} | {s['n']:,} | {_ms(s['p50'])} | {_ms(s['p95'])} | {_ms(s['p99'])} "
            f"| {_ms(s['max'])} |"
        )
    return lines


def _degradation(lat: dict[str, Any]) -> list[str]:
    """End-to-end p95 by third of the run."""
    thirds = lat["thirds_end_to_end_ms"]
    return [
        "",
        "End-to-end p95 by third of the run (degradation over time): "
        + " → ".join(_ms(t["p95"]) for t in thirds)
        + " ms.",
    ]


def _zero_loss(acc: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Zero loss, zero duplicates",
        "",
        "| check | value |",
        "|---|---|",
        f"| posts sent / rows stored / ledger keys | {acc['sent']:,} / {acc['unique_rows']:,} / "
        f"{acc['ledger_keys']:,} |",
        f"| lost | {acc['lost']} |",
        f"| stored twice | {acc['duplicate_rows']} |",
        f"| processed + ignored | {acc['processed']:,} + {acc['ignored']:,} |",
        f"| unfinished (pending, claimed, failed) | {acc['unfinished']} |",
        f"| marked exactly once | {acc['marked_once']:,} of {acc['rows']:,} |",
        f"| signals stored / expected | {acc['signals']:,} / {acc['expected_signals']:,} |",
        f"| duplicate signals | {acc['duplicate_signals']} |",
        f"| missing / unexpected signals | {acc['missing_signals']} / "
        f"{acc['unexpected_signals']} |",
    ]


def _recent_window(cache: dict[str, Any] | None) -> list[str]:
    """The pollers' Redis recent-window hit rate, when it was scraped."""
    if not cache:
        return []
    return [
        "",
        "## Redis recent window (pollers)",
        "",
        f"{cache['reads']:,} reads after the warm-up: hit rate {_pct(cache['hit_rate'])}; "
        f"{_pct(cache['hit_rate_when_pending'])} of the reads that found posts pending. "
        f"Misses by reason: {cache['miss_reasons'] or 'none'}.",
    ]


def _resources(res: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Resources (whole machine)",
        "",
        f"CPU busy mean {res.get('cpu_percent_mean')} %, max {res.get('cpu_percent_max')} %; "
        f"memory used max {res.get('memory_used_mb_max')} MB; disk writes mean "
        f"{res.get('disk_write_mb_s_mean')} MB/s.",
    ]


def write(
    result: LoadResult,
    out_dir: Path,
    *,
    plot: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    data = result.as_dict()
    if plot:
        from tgstack.loadtest.plot import PlotUnavailable, plot_timeline

        try:
            files["plot"] = str(plot_timeline(data, out_dir / "plot.png"))
        except PlotUnavailable as exc:
            say(f"no plot: {exc}")
    files["json"] = str(out_dir / "result.json")
    files["markdown"] = str(out_dir / "summary.md")
    data["files"] = files
    result.files = files
    (out_dir / "result.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out_dir / "summary.md").write_text(markdown(data))
    say(f"wrote {', '.join(files.values())}")
    return files
