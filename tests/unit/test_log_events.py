"""Every log call in the runtime is a stable event: a snake_case name as its message, values
as fields (``extra={...}``), never formatted into the text; and every event is listed in the
table of docs/troubleshooting.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

from tgstack.logs import _RESERVED

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime" / "tgstack"
EVENTS_DOC = ROOT / "docs" / "troubleshooting.md"
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
# how the runtime names its loggers: module ``log = logging.getLogger(...)``, ``logger``, ...
LOGGER_NAMES = {"log", "logger", "_log", "_logger", "LOG", "LOGGER"}
# a LogRecord attribute raises KeyError or is silently lost; the formatter writes these itself
TAKEN_KEYS = _RESERVED | {"asctime", "ts", "level", "logger", "event"}


class LogCall(NamedTuple):
    where: str
    level: str
    event: str | None  # the message when it is a plain string literal
    problem: str | None


def _is_logger(node: ast.expr) -> bool:
    """``log``, ``logger``, ``self.log``, ``logging.getLogger(...)``, ``logging`` itself."""
    if isinstance(node, ast.Name):
        return node.id in LOGGER_NAMES or node.id == "logging"
    if isinstance(node, ast.Attribute):
        return node.attr in LOGGER_NAMES
    if isinstance(node, ast.Call):
        func = node.func
        return isinstance(func, ast.Attribute) and func.attr == "getLogger"
    return False


def log_calls(source: str, filename: str) -> list[LogCall]:
    """Every call of a level method on a logger in ``source``, with what is wrong with it."""
    calls = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        level = node.func.attr
        if level not in LEVELS or not _is_logger(node.func.value):
            continue
        args = node.args[1:] if level == "log" else node.args
        where = f"{filename}:{node.lineno}"
        message = args[0] if args else None
        event = None
        if isinstance(message, ast.Constant) and isinstance(message.value, str):
            event = message.value
        problem = None
        if message is None:
            problem = "no message"
        elif event is None:
            problem = f"message is not a plain string literal: {ast.unparse(message)}"
        elif not EVENT_NAME.match(event):
            problem = f"message {event!r} is not a snake_case event name"
        elif len(args) > 1:
            problem = f"positional %-args after {event!r}: put the values in extra={{...}}"
        elif taken := _taken_extra_keys(node):
            problem = f"extra keys {taken} are LogRecord attributes or the formatter's own"
        calls.append(LogCall(where, level, event, problem))
    return calls


def _taken_extra_keys(call: ast.Call) -> list[str]:
    """The literal keys of ``extra={...}`` that a LogRecord or the JSON formatter owns."""
    for keyword in call.keywords:
        if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
            keys = keyword.value.keys
            return sorted(
                k.value for k in keys if isinstance(k, ast.Constant) and k.value in TAKEN_KEYS
            )
    return []


def problems(source: str, filename: str = "snippet.py") -> list[str]:
    return [f"{c.where} {c.problem}" for c in log_calls(source, filename) if c.problem]


def runtime_log_calls() -> list[LogCall]:
    calls = []
    for path in sorted(RUNTIME.rglob("*.py")):
        calls += log_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return calls


def documented_events() -> set[str]:
    """The first column of the event table under "### Log events" in docs/troubleshooting.md."""
    text = EVENTS_DOC.read_text(encoding="utf-8")
    section = text.split("### Log events", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z][a-z0-9_]*)` \|", section, re.MULTILINE))


# the checker itself


def test_an_event_name_with_fields_passes() -> None:
    assert not problems('log.warning("poll_skipped", extra={"reason": "database_unavailable"})')
    assert not problems('logger.info("redis_cache_recovered")')
    assert not problems('self.log.error("batch_failed", exc_info=True)')
    assert not problems('logging.getLogger("x").debug("api_request", extra={"n": 1})')
    assert not problems('log.log(logging.INFO, "poll_round", extra={"n": 1})')


def test_an_f_string_message_fails() -> None:
    assert problems('log.info(f"backfill done for {channel}")') == [
        "snippet.py:1 message is not a plain string literal: f'backfill done for {channel}'"
    ]


def test_percent_args_fail() -> None:
    assert problems('log.warning("poll_skipped %s", reason)') == [
        "snippet.py:1 message 'poll_skipped %s' is not a snake_case event name"
    ]
    assert problems('logger.error("poll_skipped", reason)') == [
        "snippet.py:1 positional %-args after 'poll_skipped': put the values in extra={...}"
    ]


def test_a_sentence_fails() -> None:
    assert problems('log.warning("poll skipped: database unavailable")') == [
        "snippet.py:1 message 'poll skipped: database unavailable' is not a snake_case event name"
    ]


def test_an_extra_key_the_record_or_the_formatter_owns_fails() -> None:
    assert problems('log.info("spill_failed", extra={"event": "x", "name": "y", "ok": 1})') == [
        "snippet.py:1 extra keys ['event', 'name'] are LogRecord attributes or the formatter's own"
    ]


def test_concatenation_and_format_fail() -> None:
    assert len(problems('log.info("batch_" + kind)\nlogging.info("x {}".format(1))')) == 2


def test_other_calls_named_like_levels_are_not_log_calls() -> None:
    assert not log_calls('math.log(2)\nparser.error("bad")\nself.log.open("ab")', "m.py")


# the runtime


def test_the_checker_finds_the_runtime_log_calls() -> None:
    assert len(runtime_log_calls()) > 50


def test_every_runtime_log_call_is_a_stable_event() -> None:
    found = [f"{c.where} {c.problem}" for c in runtime_log_calls() if c.problem]
    assert not found, "log calls that are not stable events:\n" + "\n".join(found)


def test_every_runtime_event_is_in_the_docs_table() -> None:
    events = {c.event for c in runtime_log_calls() if c.event and not c.problem}
    missing = sorted(events - documented_events())
    assert not missing, f"events missing from the table in {EVENTS_DOC.name}: {missing}"


def test_the_docs_table_lists_no_event_the_code_no_longer_logs() -> None:
    events = {c.event for c in runtime_log_calls() if c.event}
    stale = sorted(documented_events() - events)
    assert not stale, f"events in {EVENTS_DOC.name} that no code logs: {stale}"
