"""Spool source pieces that need no server: the durable positions file and fail-fast checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tgstack.config import ConfigError, load_settings
from tgstack.gateway.pipeline import IngestPipeline
from tgstack.gateway.spool import POSITIONS_FILE, FilePosition, SpoolPositions, SpoolSource
from tgstack.gateway.telethon_source import GatewayFatal


def test_positions_survive_a_reload_exactly(tmp_path: Path) -> None:
    positions = SpoolPositions(tmp_path / POSITIONS_FILE)
    positions.set("a.jsonl", FilePosition(inode=11, offset=4096, lines=30, fingerprint="ab"))
    positions.set("b.jsonl", FilePosition(inode=12, offset=7, lines=1, fingerprint="cd"))
    positions.save()

    again = SpoolPositions(tmp_path / POSITIONS_FILE)
    again.load()
    assert again.as_dict() == positions.as_dict()
    # written atomically: no temporary file left behind, private mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [POSITIONS_FILE]
    assert (tmp_path / POSITIONS_FILE).stat().st_mode & 0o777 == 0o600


def test_forgetting_removed_files_reports_whether_anything_changed(tmp_path: Path) -> None:
    positions = SpoolPositions(tmp_path / POSITIONS_FILE)
    positions.set("a.jsonl", FilePosition.start(1))
    positions.set("b.jsonl", FilePosition.start(2))
    assert positions.forget_all_but(["a.jsonl", "b.jsonl"]) is False
    assert positions.forget_all_but(["b.jsonl"]) is True
    assert list(positions.as_dict()) == ["b.jsonl"]


def test_a_missing_positions_file_means_nothing_was_read_yet(tmp_path: Path) -> None:
    positions = SpoolPositions(tmp_path / POSITIONS_FILE)
    positions.load()
    assert positions.as_dict() == {}


def test_a_corrupt_positions_file_stops_the_gateway_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / POSITIONS_FILE).write_text("{not json")
    with pytest.raises(GatewayFatal, match="remove it to read every spool file again"):
        SpoolPositions(tmp_path / POSITIONS_FILE).load()


class _NoStore:
    """A store the checks below never reach (they fail before reading anything)."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the store was used ({name}) before the spool was checked")


def _source(directory: Path) -> SpoolSource:
    return SpoolSource(directory, IngestPipeline(store=_NoStore()))  # type: ignore[arg-type]


def test_a_missing_spool_directory_is_fatal_and_named(tmp_path: Path) -> None:
    with pytest.raises(GatewayFatal, match=r"TGSTACK_GATEWAY_SPOOL_DIR: .*does not exist"):
        _source(tmp_path / "absent").check()


def test_only_visible_jsonl_files_are_followed_in_name_order(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", ".hidden.jsonl", "notes.txt", "c.jsonl.tmp"):
        (tmp_path / name).write_text("")
    (tmp_path / "d.jsonl").mkdir()
    assert [p.name for p in _source(tmp_path).spool_files()] == ["a.jsonl", "b.jsonl"]


def test_gateway_source_setting_accepts_telethon_and_spool_only(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("TGSTACK_GATEWAY_SOURCE=spool\nTGSTACK_GATEWAY_SPOOL_DIR=/srv/spool\n")
    env.chmod(0o600)
    settings = load_settings(env)
    assert (settings.gateway_source, settings.gateway_spool_dir) == ("spool", Path("/srv/spool"))
    env.write_text("TGSTACK_GATEWAY_SOURCE=carrier-pigeon\n")
    with pytest.raises(ConfigError, match=r"^TGSTACK_GATEWAY_SOURCE: "):
        load_settings(env)


def test_telethon_is_the_default_source(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("TGSTACK_LOG_LEVEL=INFO\n")
    env.chmod(0o600)
    settings = load_settings(env)
    assert settings.gateway_source == "telethon"
    assert settings.gateway_spool_dir == Path("/var/lib/tgstack/spool")
