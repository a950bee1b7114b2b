"""The golden corpus: every post classified exactly as a reader expects, no chatter a signal."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.signals_corpus import Post, load_corpus
from tgstack.signals import KINDS, classify

CORPUS = load_corpus()


def test_the_corpus_is_large_and_covers_every_kind_and_both_languages() -> None:
    kinds = Counter(post.kind for post in CORPUS)
    assert len(CORPUS) >= 300
    assert set(kinds) == set(KINDS), kinds
    assert all(count >= 10 for count in kinds.values()), kinds
    assert {post.lang for post in CORPUS} == {"pt", "en"}
    follow_ups = {"target_hit", "stop_moved", "stopped", "closed", "cancelled"}
    for lang in ("pt", "en"):
        assert {p.kind for p in CORPUS if p.lang == lang} >= follow_ups | {"signal", "chatter"}
    assert len({post.id for post in CORPUS}) == len(CORPUS), "ids are unique"


def test_the_corpus_holds_every_format_the_issue_names() -> None:
    tags = Counter(tag for post in CORPUS for tag in post.tags)
    for tag in (
        "one-line",
        "no-colon",
        "de-ate",
        "ticker-first",
        "compact",
        "mixed-case",
        "export",
        "header",
        "brl",
        "math-bold",
        "math-italic",
        "one-dot-leader",
        "nbsp",
        "thin-space-thousands",
        "full-width",
        "option",
        "future",
        "bdr",
        "unit",
        "etf",
        # the forms of the second round: calls without an entry label, Cornix, news and
        # reminders that must stay chatter, summaries, several calls in one post
        "unlabelled-entry",
        "direction-ticker",
        "cornix",
        "numbered-list",
        "cashtag",
        "generic-future",
        "reported",
        "reminder",
        "summary",
        "several-calls",
        "result-sign",
        "math-sans-bold",
        "double-struck",
        # the third round: a buy the channel reports or orders (its plan makes it the entry;
        # without one, or in a recap, it is no new signal)
        "buy-verb",
        "imperative",
        "fill",
        "recap",
        "position-opened",
        # an option named with its underlying: the option is the asset
        "option-underlying",
        # a sale reported ("vendemos a 39"): a close, its result against the buy
        "sell-verb",
    ):
        assert tags[tag] >= 1, tag


@pytest.mark.parametrize("post", CORPUS, ids=[post.id for post in CORPUS])
def test_each_post_is_classified_as_expected(post: Post) -> None:
    assert classify(post.text).to_dict() == post.expected


def test_no_chatter_is_classified_as_a_signal() -> None:
    chatter = [post for post in CORPUS if post.kind == "chatter"]
    assert len(chatter) >= 50
    assert [p.id for p in chatter if classify(p.text).kind == "signal"] == []
