"""Reaching the test tooling (``tgstack_testing``) from the few commands that need it.

``tgstack loadtest --local`` starts throwaway servers and ``tgstack legacy seed`` writes the
legacy table's fixture rows, both with code from the repository's ``testing/`` directory, which
is not in the wheel: a production server has the runtime only. Such a command calls
``require_test_tooling`` before it imports from ``tgstack_testing`` (inside the function, never
at module level). It is found where Python finds it, else in the ``testing/`` directory of the
checkout this runtime runs from (an editable install, as ``make venv`` makes), which is then put
on ``sys.path``; without it the command fails with one line that says what is missing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import tgstack
from tgstack.config import ConfigError

TESTING_PACKAGE = "tgstack_testing"


class MissingTestTooling(ConfigError):
    """A command needs the test tooling and this installation has none (the wheel alone)."""


def checkout_testing_dirs() -> list[Path]:
    """The ``testing/`` directories of the checkouts around this installation, nearest first."""
    here = Path(tgstack.__file__).resolve().parent
    return [parent / "testing" for parent in here.parents]


def _holds_tooling(directory: Path) -> bool:
    return (directory / TESTING_PACKAGE / "__init__.py").is_file()


def require_test_tooling(command: str) -> None:
    """Make ``tgstack_testing`` importable for ``command``, or raise ``MissingTestTooling``."""
    try:
        importlib.import_module(TESTING_PACKAGE)
        return
    except ModuleNotFoundError as exc:
        if exc.name != TESTING_PACKAGE:
            raise
    for directory in checkout_testing_dirs():
        if _holds_tooling(directory):
            sys.path.append(str(directory))
            importlib.invalidate_caches()
            importlib.import_module(TESTING_PACKAGE)
            return
    raise MissingTestTooling(
        f"{command} needs the test tooling ({TESTING_PACKAGE}), which ships with the repository's "
        "testing/ directory, not the wheel: run it from a checkout (make venv) or put that "
        "directory on PYTHONPATH"
    )
