"""The load test's pure parts: pacing, percentiles, the timeline, posts, plans, cache counters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.config import ConfigError
from tgstack.loadtest import cachestats
from tgstack.loadtest.observer import DonePost
from tgstack.loadtest.pacer import Pacer
from tgstack.loadtest.plan import LOADTEST_CHANNEL_BASE, LoadPlan, loadtest_channels
from tgstack.loadtest.posts import PostFactory
from tgstack.loadtest.stats import percentile, summary_ms, thirds, timeline
from tgstack.loadtest.wire import find_server_dir, holds_server
from tgstack.models import MessageKey
from tgstack.signals import parse_signal


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_pacer_releases_posts_at_the_rate_and_never_more_than_the_total() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, 25, clock=clock, sleep=clock.sleep)
    pacer.start()
    assert pacer.due() == 1  # the first post is due at once
    pacer.record(1)
    clock.now += 1.0
    assert pacer.due() == 10
    pacer.record(10)
    clock.now += 100.0
    assert pacer.due() == 14
    assert pacer.behind > 1


def test_the_pacer_without_a_rate_releases_everything() -> None:
    pacer = Pacer(None, 7)
    pacer.start()
    assert pacer.due() == 7
    pacer.record(7)
    assert pacer.done


def test_the_pacer_waits_for_the_next_post() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, 10, clock=clock, sleep=clock.sleep, tick=10.0)
    pacer.start()
    pacer.record(pacer.due())
    pacer.wait()
    assert clock.now == pytest.approx(100.25)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_percentiles_are_values_of_the_sample_in_order(values: list[float]) -> None:
    p50, p95, p99 = (percentile(values, p) for p in (50, 95, 99))
    assert p50 in values
    assert min(values) <= p50 <= p95 <= p99 <= max(values)


def test_percentile_of_nothing_is_nan_and_summary_says_so() -> None:
    assert math.isnan(percentile([], 99))
    assert summary_ms([])["p99"] is None
    assert summary_ms([0.001, 0.002])["p50"] == 1.0


def done(second: float, latency: float, key: int = 1) -> DonePost:
    return DonePost(
        MessageKey(-1009999999000, key),
        sent_at=second,
        is_signal=False,
        received_at=second + latency / 2,
        published_at=None,
        processed_at=second + latency,
        state="ignored",
    )


def test_the_timeline_counts_each_post_once_in_its_seconds() -> None:
    posts = [done(0.1, 0.05, 1), done(0.6, 0.05, 2), done(1.2, 1.0, 3)]
    rows = timeline(posts, [p.sent_at for p in posts], start=0.0)
    assert [row["sent"] for row in rows] == [2, 1, 0]
    assert [row["done"] for row in rows] == [2, 0, 1]
    assert rows[1]["p99_ms"] == 1000.0
    assert rows[2]["p50_ms"] is None


def test_thirds_split_the_run_by_sent_time() -> None:
    posts = [done(float(i), 0.01 if i < 3 else 1.0, i + 1) for i in range(9)]
    first, _, last = thirds(posts)
    assert first["p95"] == 10.0
    assert last["p95"] == 1000.0


def test_posts_go_round_robin_with_increasing_ids_and_signals_parse() -> None:
    channels = loadtest_channels(2)
    factory = PostFactory(channels, {channels[0]: 50}, signal_share=0.5, seed=3)
    made = [factory.make() for _ in range(40)]
    assert [record.message_id for record, _ in made[:4]] == [50, 1, 51, 2]
    assert factory.id_ranges() == {channels[0]: (50, 69), channels[1]: (1, 20)}
    for record, post in made:
        assert (parse_signal(record.text) is not None) == post.is_signal
        assert post.sent_at == record.telegram_date.timestamp()
    assert 0 < sum(post.is_signal for _, post in made) < 40


def test_drafts_take_the_same_turns_and_texts_as_made_posts_but_no_ids() -> None:
    channels = loadtest_channels(3)
    drafts = PostFactory(channels, {}, seed=5)
    made = PostFactory(channels, {}, seed=5)
    for _ in range(9):
        draft, (record, post) = drafts.draft(), made.make()
        assert (draft.channel, draft.text, draft.is_signal) == (
            record.channel_id, record.text, post.is_signal,
        )  # fmt: skip
    assert drafts.sent == 9
    assert drafts.id_ranges() == {}  # the Telegram server numbers drafts, not the factory


def test_the_telegram_server_is_found_in_a_checkout_or_its_absence_says_what_to_give(
    tmp_path: Path,
) -> None:
    package = tmp_path / "checkout" / "testing" / "tgstack_testing" / "telegram"
    package.mkdir(parents=True)
    (package / "__main__.py").write_text("")
    assert find_server_dir(tmp_path / "checkout") == tmp_path / "checkout" / "testing"
    assert find_server_dir(tmp_path / "checkout" / "testing") == tmp_path / "checkout" / "testing"
    assert holds_server(find_server_dir())  # this checkout's own, found without a hint
    with pytest.raises(ConfigError, match=r"^--telegram-server-dir: .* not in .*nowhere"):
        find_server_dir(tmp_path / "nowhere")


def test_load_test_channels_are_marked_ids_of_their_own() -> None:
    assert loadtest_channels(3) == [
        LOADTEST_CHANNEL_BASE,
        LOADTEST_CHANNEL_BASE - 1,
        LOADTEST_CHANNEL_BASE - 2,
    ]
    with pytest.raises(ValueError, match="channels"):
        loadtest_channels(0)


def test_a_plan_needs_a_rate_or_a_count() -> None:
    assert LoadPlan(rate=50, duration=3).total_posts == 150
    assert LoadPlan(rate=None, count=1000).total_posts == 1000
    with pytest.raises(ValueError, match="count"):
        LoadPlan(rate=None)
    with pytest.raises(ValueError, match="rate"):
        LoadPlan(rate=-1)


PAGE = """
# TYPE tgstack_cache_operations_total counter
tgstack_cache_operations_total{operation="get_unprocessed",result="hit"} 90.0
tgstack_cache_operations_total{operation="get_unprocessed",result="miss"} 10.0
tgstack_cache_operations_total{operation="cache_message",result="ok"} 500.0
# TYPE tgstack_cache_fallbacks_total counter
tgstack_cache_fallbacks_total{operation="get_unprocessed",reason="empty"} 8.0
tgstack_cache_fallbacks_total{operation="get_unprocessed",reason="expired"} 2.0
"""


def test_cache_counters_give_the_window_hit_rate_after_the_warm_up() -> None:
    end = cachestats.parse(PAGE + PAGE)  # two pollers' pages
    start = cachestats.parse(PAGE)
    delta = end.minus(start)
    assert delta.hits == 90
    assert delta.hit_rate == pytest.approx(0.9)
    assert delta.hit_rate_when_pending == pytest.approx(90 / 92)
    assert delta.as_dict()["miss_reasons"] == {"empty": 8, "expired": 2}
