"""The PNG of a run: throughput and end-to-end latency percentiles over time.

matplotlib comes with the ``bench`` extra (``pip install 'tgstack[bench]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_timeline(data: dict[str, Any], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("matplotlib is missing: pip install 'tgstack[bench]'") from exc
    rows = data["timeline"]
    t = [row["t"] for row in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(t, [row["sent"] for row in rows], label="sent/s", color="tab:gray")
    top.plot(t, [row["stored"] for row in rows], label="stored/s", color="tab:blue")
    top.plot(t, [row["done"] for row in rows], label="signal/mark committed/s", color="tab:green")
    top.set_ylabel("posts per second")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    cpu = [row.get("cpu_percent") for row in rows]
    if any(value is not None for value in cpu):
        right = top.twinx()
        right.plot(t, cpu, color="tab:red", alpha=0.3, linewidth=1, label="CPU %")
        right.set_ylim(0, 105)
        right.set_ylabel("machine CPU busy %", color="tab:red")
    for p, color in ((50, "tab:blue"), (95, "tab:orange"), (99, "tab:red")):
        bottom.plot(t, [row[f"p{p}_ms"] for row in rows], label=f"p{p}", color=color)
    bottom.set_ylabel("end-to-end latency (ms)")
    bottom.set_xlabel("seconds since the first post")
    bottom.set_yscale("log")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3, which="both")
    plan = data["plan"]
    offered = f"{plan['rate']:g}/s" if plan["rate"] else "max rate"
    load = " ".join(f"{x:.2f}" for x in data["loadavg_before"])
    figure.suptitle(
        f"tgstack loadtest {data['label']}: {offered}, {plan['pollers']} {plan['poller_kind']} "
        f"poller(s), {plan['mode']} — {'PASS' if data['ok'] else 'FAIL'} (loadavg {load})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
