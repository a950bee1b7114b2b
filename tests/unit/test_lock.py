"""The Python lock: uv.lock, its hashed exports, the check make test-fast runs, and how the
runtime role's wheelhouse reads the runtime export for a server's interpreter."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
DEV_LOCK = REPO / "requirements" / "dev.txt"
UV = Path(sys.executable).with_name("uv")


def _wheelhouse() -> Any:
    path = REPO / "roles" / "tgstack_runtime" / "files" / "wheelhouse.py"
    spec = importlib.util.spec_from_file_location("tgstack_wheelhouse", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _wheelhouse()


def _pins(path: Path, python: str = "3.13.5") -> dict[str, str]:
    environment = wheelhouse.target_environment(python, "x86_64")
    return dict(wheelhouse.locked_pins(path.read_text(), environment))


def test_every_locked_requirement_is_pinned_exactly_with_hashes():
    for path in (RUNTIME_LOCK, DEV_LOCK):
        for python in ("3.11.2", "3.11.7", "3.13.5"):
            environment = wheelhouse.target_environment(python, "x86_64")
            lines = wheelhouse.locked_requirements(path.read_text(), environment)
            assert lines, path
            assert all("==" in line.split()[0] and "--hash=sha256:" in line for line in lines)


def test_the_runtime_export_is_the_runtime_part_of_the_dev_export():
    runtime, dev = _pins(RUNTIME_LOCK), _pins(DEV_LOCK)
    assert {"telethon", "psycopg", "redis", "amqpstorm", "pyaes"} <= runtime.keys()
    assert {name: dev.get(name) for name in runtime} == runtime
    assert "pytest" in dev
    assert "pytest" not in runtime


def test_markers_are_evaluated_for_the_servers_interpreter_not_the_controllers():
    old, new = _pins(RUNTIME_LOCK, "3.11.2"), _pins(RUNTIME_LOCK, "3.13.5")
    assert "async-timeout" in old  # redis needs it below 3.11.3
    assert "async-timeout" not in new
    assert "tzdata" not in new  # Windows only


def test_a_requirement_without_a_hash_is_refused():
    text = "redis==8.2.0 \\\n    --hash=sha256:00\nwaitress==3.0.2\n"
    with pytest.raises(wheelhouse.WheelhouseError, match=re.escape("waitress==3.0.2")):
        wheelhouse.locked_requirements(text, wheelhouse.target_environment("3.13.5", "x86_64"))


def test_a_range_instead_of_a_pin_is_refused():
    text = "redis>=8 \\\n    --hash=sha256:00\n"
    with pytest.raises(wheelhouse.WheelhouseError, match="exactly"):
        wheelhouse.locked_requirements(text, wheelhouse.target_environment("3.13.5", "x86_64"))


def _project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(REPO / "requirements", project / "requirements")
    shutil.copy2(REPO / "scripts" / "lock.sh", project / "scripts" / "lock.sh")
    return project


def _check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(project / "scripts" / "lock.sh"), "check"],
        env={"PATH": "/usr/bin:/bin", "UV": str(UV), "HOME": str(project)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_committed_lock_agrees_with_pyproject(tmp_path):
    done = _check(_project_copy(tmp_path))
    assert done.returncode == 0, done.stderr


def test_the_check_fails_in_one_line_when_pyproject_changes_without_a_relock(tmp_path):
    project = _project_copy(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert '"uvicorn>=0.35,<1"' in text
    pyproject.write_text(text.replace('"uvicorn>=0.35,<1"', '"uvicorn>=0.34,<1"'))
    done = _check(project)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "lock: pyproject.toml and uv.lock disagree: "
        "run 'make lock' and commit uv.lock and requirements/"
    ]


def test_the_check_fails_when_an_export_was_edited_by_hand(tmp_path):
    project = _project_copy(tmp_path)
    export = project / "requirements" / "runtime.txt"
    export.write_text(export.read_text().replace("redis==8.2.0", "redis==8.1.0"))
    done = _check(project)
    assert done.returncode == 1
    assert "requirements/runtime.txt is not the export of uv.lock" in done.stderr


def test_print_pins_gives_what_the_server_must_hold():
    done = subprocess.run(
        [sys.executable, str(REPO / "roles" / "tgstack_runtime" / "files" / "wheelhouse.py"),
         "--print-pins", "--requirements", str(RUNTIME_LOCK), "--python-version", "3.13.5",
         "--machine", "x86_64"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == _pins(RUNTIME_LOCK)
