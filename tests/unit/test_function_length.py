"""No function in the runtime is longer than 60 lines: long ones are split into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "tgstack"
MAX_LINES = 60


def long_functions(source: str, filename: str, limit: int = MAX_LINES) -> list[str]:
    """Every function in `source` longer than `limit` lines, `def` line to last line inclusive."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append(f"{filename}:{node.lineno} {node.name}: {length} lines")
    return found


def test_long_functions_finds_a_function_over_the_limit() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    assert long_functions(f"def short():\n    pass\n\ndef long():\n{body}\n", "m.py", limit=5) == [
        "m.py:4 long: 6 lines"
    ]


def test_no_runtime_function_is_over_60_lines() -> None:
    found = []
    for path in sorted(RUNTIME.rglob("*.py")):
        found += long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(RUNTIME)))
    assert not found, "functions over 60 lines, split them into named steps:\n" + "\n".join(found)
