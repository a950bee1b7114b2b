"""Throughput of the signal reader on one core: ``python tests/bench/bench_parser.py``.

Runs ``tgstack.signals.classify`` (what the poller calls for every post: scan, fields,
follow-up events, decision) over the golden corpus (tests/data/signals/corpus.jsonl: signals,
follow-ups, chatter, Unicode traps) again and again for ``--seconds``, in this one
single-threaded process (``--cpu N`` pins it to core N), and prints posts per second.

Posts per second are counted against the process's CPU time, which is what one core spends on
them whatever else the machine runs, and the figure is the median of the passes (a pass that
shared its core with a burst of other work does not decide it); the wall-clock rate is printed
beside it. The token cache
(``clear_token_cache``) is emptied before every pass over the corpus, so each pass starts as a
stream of new posts does; ``--cold`` empties it before every post (the worst case: no word
ever seen before).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.signals_corpus import CORPUS_PATH, load_corpus
from tgstack.signals import classify
from tgstack.signals.scanner import clear_token_cache

TARGET_POSTS_PER_S = 20_000.0


def _one_pass(texts: Sequence[str], *, cold: bool) -> tuple[float, float]:
    """CPU and wall seconds for one pass over the texts."""
    clear_token_cache()
    cpu, wall = time.process_time(), time.perf_counter()
    if cold:
        for text in texts:
            clear_token_cache()
            classify(text)
    else:
        for text in texts:
            classify(text)
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS_PATH)
    parser.add_argument("--seconds", type=float, default=10.0, help="measure for this long")
    parser.add_argument("--cpu", type=int, help="pin the process to this core")
    parser.add_argument("--cold", action="store_true", help="empty the token cache per post")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    texts = [post.text for post in load_corpus(args.corpus)]
    for _ in range(3):  # warm up the interpreter, the regex caches and the allocator
        _one_pass(texts, cold=args.cold)
    rates_cpu, rates_wall = [], []
    cpu_total = wall_total = 0.0
    while wall_total < args.seconds:
        cpu, wall = _one_pass(texts, cold=args.cold)
        cpu_total, wall_total = cpu_total + cpu, wall_total + wall
        rates_cpu.append(len(texts) / cpu if cpu > 0 else float("inf"))
        rates_wall.append(len(texts) / wall)
    posts = len(texts) * len(rates_cpu)
    rate = statistics.median(rates_cpu)
    print(
        f"# Signal reader throughput ({len(texts)} corpus posts, {len(rates_cpu)} passes, "
        f"{'cold' if args.cold else 'fresh'} token cache per {'post' if args.cold else 'pass'})"
    )
    print(
        f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores{'' if args.cpu is None else f', pinned to core {args.cpu}'}"
    )
    print(
        f"per CPU second: {rate:,.0f} posts/s (median of the passes; over all of them "
        f"{posts / cpu_total:,.0f}), {1e6 / rate:.1f} µs/post"
    )
    print(
        f"per wall second: {posts / wall_total:,.0f} posts/s "
        f"(median pass {statistics.median(rates_wall):,.0f})"
    )
    verdict = "PASS" if rate >= TARGET_POSTS_PER_S else "FAIL"
    print(f"{verdict}: {rate:,.0f} posts/s on one core (target ≥ {TARGET_POSTS_PER_S:,.0f})")
    return 0 if rate >= TARGET_POSTS_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())
