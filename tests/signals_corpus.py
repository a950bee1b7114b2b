"""The golden corpus of channel posts (tests/data/signals/corpus.jsonl), read by the corpus test,
``make parser-report`` and ``make bench-parser``.

Each line: ``id``, ``lang`` (pt/en), ``tags``, ``text`` (the post) and ``expected`` (the
``tgstack signals classify`` object a reader expects for it, written by reading the post).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "signals" / "corpus.jsonl"


@dataclass(frozen=True)
class Post:
    id: str
    lang: str
    tags: tuple[str, ...]
    text: str
    expected: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.expected["kind"])


def load_corpus(path: Path = CORPUS_PATH) -> list[Post]:
    posts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                posts.append(
                    Post(
                        id=record["id"],
                        lang=record["lang"],
                        tags=tuple(record.get("tags", ())),
                        text=record["text"],
                        expected=record["expected"],
                    )
                )
            except KeyError as exc:
                raise ValueError(f"{path}:{number}: missing {exc}") from None
    return posts
