"""The wheel ships the runtime and no test tooling; the runtime works from the wheel alone.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``) from a
copy of the sources, as ``pip`` would build it for a server, and installed into a directory of
its own. A production server has only that: the commands that need test tooling
(``tgstack loadtest --local``, ``tgstack legacy seed``) must say so in one line, and no module
may need ``tgstack_testing`` to import.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "runtime" / "tgstack"
TESTING_PACKAGE = "tgstack_testing"
# What only test tooling holds: its modules, and the legacy table's DDL (its unique key on
# created_at, the flaw the import folds away, appears nowhere else).
TEST_TOOLING_FILES = ("tgstack/localstack.py", "tgstack/legacy/seed.py", "tgstack/legacy/schema.py")
LEGACY_DDL_MARK = b"messages_channel_message_created_key"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the sources (the build writes build/ and *.egg-info in place)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(  # runtime/tgstack/sql is a symlink to sql/: copied as files
        REPO / "runtime",
        source / "runtime",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    out = root / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("tgstack-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a directory of its own (its dependencies: this interpreter's)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return target


def run_from_wheel(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that sees the installed wheel, not this checkout.

    The wheel's directory comes first on ``sys.path``, the checkout's ``runtime/`` and
    ``testing/`` are taken off it (and an editable install's finder off ``sys.meta_path``), so
    ``tgstack`` is the wheel's and ``tgstack_testing`` is nowhere, as on a server; the working
    directory is outside the checkout.
    """
    prologue = textwrap.dedent(
        f"""
        import sys
        sources = ({str(REPO / "runtime")!r}, {str(REPO / "testing")!r}, {str(REPO)!r})
        sys.path[:] = [{str(site)!r}] + [p for p in sys.path if p.rstrip("/") not in sources]
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
        import tgstack
        assert tgstack.__file__.startswith({str(site)!r}), tgstack.__file__
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TGSTACK_"))}
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def test_the_wheel_holds_the_runtime_and_no_test_tooling(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        contents = {name: archive.read(name) for name in names if not name.endswith("/")}

    assert {"tgstack/cli.py", "tgstack/postgres.py", "tgstack/legacy/importer.py"} <= set(names)
    assert "tgstack/sql/001_schema.sql" in names
    assert [n for n in names if n.startswith(f"{TESTING_PACKAGE}/")] == []
    assert [n for n in names if n in TEST_TOOLING_FILES] == []
    assert [n for n, text in contents.items() if LEGACY_DDL_MARK in text] == []


def test_every_runtime_module_imports_from_the_wheel_alone(
    installed: Path, tmp_path: Path
) -> None:
    result = run_from_wheel(
        installed,
        """
        import importlib, pkgutil
        names = [m.name for m in pkgutil.walk_packages(tgstack.__path__, "tgstack.")]
        names.remove("tgstack.__main__")  # runs the CLI: imported by python -m tgstack only
        for name in names:
            importlib.import_module(name)
        assert "tgstack_testing" not in sys.modules, "tgstack_testing was imported"
        print(len(names))
        """,
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 80  # every module, not an empty package


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("tgstack legacy seed", ["legacy", "seed", "--sql", "--posts", "1"]),
        ("tgstack loadtest --local", ["loadtest", "--local", "--count", "1", "--no-plot"]),
    ],
)
def test_a_command_that_needs_test_tooling_says_so_in_one_line_from_the_wheel(
    installed: Path, tmp_path: Path, command: str, argv: list[str]
) -> None:
    result = run_from_wheel(
        installed, f"from tgstack.cli import main\nsys.exit(main({argv!r}))", tmp_path
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"tgstack: error: {command} needs the test tooling ({TESTING_PACKAGE}), which ships "
        "with the repository's testing/ directory, not the wheel: run it from a checkout "
        "(make venv) or put that directory on PYTHONPATH"
    ]
    assert result.stdout == ""


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Names imported when the module runs: top level and under module-level if/try, but
    not under ``if TYPE_CHECKING:`` nor inside functions and classes' methods."""
    found: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.append(node.module)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody):
                    visit(part)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.ClassDef | ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def test_no_runtime_module_imports_test_tooling_when_it_is_imported() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted(RUNTIME.rglob("*.py"))
        if any(
            name == TESTING_PACKAGE or name.startswith(TESTING_PACKAGE + ".")
            for name in _module_level_imports(ast.parse(path.read_text(encoding="utf-8")))
        )
    ]

    assert offenders == []


def test_the_import_check_sees_a_module_level_import_and_not_a_lazy_one() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from tgstack_testing.localstack import DataStack\n"
        "try:\n    import tgstack_testing.legacy\nexcept ImportError:\n    pass\n"
        "def later():\n    from tgstack_testing.localstack import free_port\n"
    )

    assert _module_level_imports(tree) == ["typing", "tgstack_testing.legacy"]
