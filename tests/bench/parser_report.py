"""Accuracy of the signal reader on the golden corpus: ``python tests/bench/parser_report.py``.

For every kind (signal, target_hit, …, chatter) and every output field (asset, buy_min, target,
stop, result, …) prints precision and recall of ``tgstack.signals.classify`` against the
corpus's expected outputs (tests/data/signals/corpus.jsonl), then the posts it got wrong.

* kind K: precision = posts classified K that are K / posts classified K; recall = posts
  that are K classified K / posts that are K.
* field F: a value is *right* when it equals the expected one. precision = right values /
  values given (non-null); recall = right values / values expected (non-null).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.signals_corpus import CORPUS_PATH, load_corpus
from tgstack.signals import KINDS, classify

FIELDS = (
    "asset",
    "signal_type",
    "buy_min",
    "buy_max",
    "target_1",
    "target_2",
    "target_final",
    "stop",
    "target",
    "result",
    "missing",
)


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def report(path: Path) -> dict[str, Any]:
    posts = load_corpus(path)
    got = {post.id: classify(post.text).to_dict() for post in posts}
    kinds: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        expected = {p.id for p in posts if p.kind == kind}
        given = {pid for pid, out in got.items() if out["kind"] == kind}
        right = len(expected & given)
        kinds[kind] = {
            "expected": len(expected),
            "given": len(given),
            "precision": _ratio(right, len(given)),
            "recall": _ratio(right, len(expected)),
        }
    fields: dict[str, dict[str, Any]] = {}
    for name in FIELDS:
        given_n = expected_n = right = 0
        for post in posts:
            want, have = post.expected.get(name), got[post.id].get(name)
            expected_n += want is not None and want != []
            given_n += have is not None and have != []
            right += want is not None and want != [] and want == have
        fields[name] = {
            "expected": expected_n,
            "given": given_n,
            "precision": _ratio(right, given_n),
            "recall": _ratio(right, expected_n),
        }
    wrong = [
        {"id": p.id, "expected": p.expected, "got": got[p.id]}
        for p in posts
        if got[p.id] != p.expected
    ]
    chatter_as_signal = [
        p.id for p in posts if p.kind == "chatter" and got[p.id]["kind"] == "signal"
    ]
    return {
        "corpus": str(path),
        "posts": len(posts),
        "exact": len(posts) - len(wrong),
        "kinds": kinds,
        "fields": fields,
        "chatter_as_signal": chatter_as_signal,
        "wrong": wrong,
    }


def print_report(data: dict[str, Any]) -> None:
    print(f"# Signal reader on the golden corpus ({data['posts']} posts, {data['corpus']})\n")
    exact = data["exact"] / data["posts"]
    print(
        f"exactly right: {data['exact']} / {data['posts']} ({_pct(exact)}); "
        f"chatter classified as a signal: {len(data['chatter_as_signal'])}\n"
    )
    print("| kind | posts | classified as | precision | recall |")
    print("|---|---:|---:|---:|---:|")
    for kind, row in data["kinds"].items():
        print(
            f"| {kind} | {row['expected']} | {row['given']} | {_pct(row['precision'])} "
            f"| {_pct(row['recall'])} |"
        )
    print("\n| field | expected | given | precision | recall |")
    print("|---|---:|---:|---:|---:|")
    for name, row in data["fields"].items():
        print(
            f"| {name} | {row['expected']} | {row['given']} | {_pct(row['precision'])} "
            f"| {_pct(row['recall'])} |"
        )
    for miss in data["wrong"]:
        print(f"\nwrong: {miss['id']}\n  expected {miss['expected']}\n  got      {miss['got']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS_PATH)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    data = report(args.corpus)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
