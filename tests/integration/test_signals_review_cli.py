"""`tgstack signals review` against a real PostgreSQL (through PgBouncer, as the other database
commands connect): the open reviews, newest first, as a table or JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.conftest import TestDatabase
from tests.integration.test_api_support import BASE_DATE, CHANNEL_A, CHANNEL_B, insert_review
from tgstack import cli
from tgstack_testing.localstack import free_port

LONG = "🟢𝐒𝐰𝐢𝐧𝐠 𝐓𝐫𝐚𝐝𝐞 PETR4 " + "muito texto " * 10


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """cli.main points the root logger at the test's captured stderr, closed once the test
    ends; later tests' threads (an API server) would log into it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def database(db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> TestDatabase:
    monkeypatch.delenv("TGSTACK_ENV_FILE", raising=False)
    monkeypatch.setenv("TGSTACK_DATABASE_URL", db.app_dsn)
    return db


def _reviews(db: TestDatabase) -> None:
    dsn = db.app_dsn
    insert_review(
        dsn, CHANNEL_A, 10, telegram_date=BASE_DATE, asset="PETR4",
        raw_text="\n\nAtivo: PETR4\nAlvo: 30",
    )  # fmt: skip
    insert_review(
        dsn, CHANNEL_B, 11, telegram_date=BASE_DATE + timedelta(minutes=5), asset=None,
        missing=("entry", "asset"), raw_text=LONG,
    )  # fmt: skip
    insert_review(dsn, CHANNEL_A, 12, telegram_date=BASE_DATE + timedelta(minutes=10))
    insert_review(
        dsn, CHANNEL_A, 13, telegram_date=BASE_DATE + timedelta(minutes=20), retired=True
    )  # completed by an edit: no longer listed


def test_review_prints_the_open_reviews_newest_first_as_a_table(
    database: TestDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    _reviews(database)
    assert cli.main(["signals", "review"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].split() == [
        "telegram_date", "(UTC)", "channel", "message", "asset", "missing", "text",
    ]  # fmt: skip
    assert [line.split()[3] for line in lines[1:]] == ["12", "11", "10"]
    newest, long, oldest = lines[1:]
    assert newest.startswith("2024-05-01 12:10:00  -1001649127710  12")
    assert "PETR4" in newest
    assert "entry,asset" in long
    assert " - " in long  # no asset
    text = long[long.index("🟢") :]
    assert len(text) == 60
    assert text.endswith("…")
    assert oldest.endswith("Ativo: PETR4")  # the first line with text
    assert out.err == ""


def test_review_json_lines_limit_and_channel(
    database: TestDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    _reviews(database)
    assert cli.main(["signals", "review", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["message_id"] for row in rows] == [12, 11, 10]
    assert rows[1] == {
        "id": rows[1]["id"],
        "channel_id": CHANNEL_B,
        "message_id": 11,
        "telegram_date": "2024-05-01T12:05:00Z",
        "asset": None,
        "missing": ["entry", "asset"],
        "raw_text": LONG,
    }

    assert cli.main(["signals", "review", "--json", "--limit", "2"]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["message_id"] for line in out.out.splitlines()] == [12, 11]
    assert "the newest 2 shown; more need review" in out.err

    assert cli.main(["signals", "review", "--json", "--channel", str(CHANNEL_A)]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["message_id"] for line in out.out.splitlines()] == [12, 10]
    assert out.err == ""


def test_review_with_nothing_to_review_says_so_and_exits_0(
    database: TestDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_review(database.app_dsn, CHANNEL_A, 1, telegram_date=BASE_DATE, retired=True)
    assert cli.main(["signals", "review"]) == 0
    assert capsys.readouterr().out == "no posts need review\n"
    assert cli.main(["signals", "review", "--json"]) == 0
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "no posts need review\n")  # stdout stays JSON lines
    _reviews(database)
    assert cli.main(["signals", "review", "--channel", "-1009999999999"]) == 0
    assert capsys.readouterr().out == "no posts need review\n"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--limit", "0"], "0 must be at least 1"),
        (["--limit", "ten"], "'ten' is not a whole number"),
        (["--channel", "1649127710"], "must be a marked channel id"),
        (["--channel", "x"], "must be an integer"),
    ],
)
def test_review_refuses_bad_options_with_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["signals", "review", *argv])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_review_without_a_database_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TGSTACK_ENV_FILE", raising=False)
    monkeypatch.setenv(
        "TGSTACK_DATABASE_URL",
        f"postgresql://telegram:secret-pw@127.0.0.1:{free_port()}/telegram_gateway",
    )
    assert cli.main(["signals", "review"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tgstack: error: OperationalError: ")
    assert len(err.splitlines()) == 1
    assert "secret-pw" not in err
