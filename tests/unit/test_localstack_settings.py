"""Settings the local test stack refuses before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tgstack_testing.localstack import MIN_SENTINEL_DOWN_AFTER_MS, LocalStackError, RedisHA


def test_a_down_after_within_sentinels_one_second_reconnect_period_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(LocalStackError, match="down_after_ms 1000 is below 2000"):
        RedisHA(tmp_path, down_after_ms=1000)


def test_the_minimum_down_after_is_accepted_and_given_to_every_sentinel(tmp_path: Path) -> None:
    ha = RedisHA(tmp_path, down_after_ms=MIN_SENTINEL_DOWN_AFTER_MS)
    assert all(s.down_after_ms == MIN_SENTINEL_DOWN_AFTER_MS for s in ha.sentinels)
