"""scripts/testbed/engine.sh clears a dead dockerd's state without touching other processes.

On these machines /run outlives the processes: CI once found the managed containerd's pid
file from the previous boot naming a pid that now belonged to another process, so dockerd
waited for a containerd that was not there and gave up ("containerd is still running", then
"failed to start containerd: timeout waiting for containerd to start"). The script now
trusts a pid file only when the pid runs a process of the expected name.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "scripts" / "testbed" / "engine.sh"


def run_engine_function(snippet: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Source engine.sh (which then only defines its functions) and run `snippet`."""
    return subprocess.run(
        ["bash", "-c", f'. "{ENGINE}"; {snippet}'],
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@pytest.fixture
def unrelated_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is neither dockerd nor containerd (its name is `sleep`)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_pid_file_naming_another_process_is_not_trusted(
    tmp_path: Path, unrelated_process: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "containerd.pid"
    pid_file.write_text(str(unrelated_process.pid))
    as_containerd = run_engine_function(f'pidfile_runs "{pid_file}" containerd', {})
    as_sleep = run_engine_function(f'pidfile_runs "{pid_file}" sleep', {})
    assert as_containerd.returncode == 1, as_containerd.stderr
    assert as_sleep.returncode == 0, as_sleep.stderr


def test_missing_or_dead_pid_file_is_not_trusted(tmp_path: Path) -> None:
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    pid_file = tmp_path / "dead.pid"
    pid_file.write_text(str(dead.pid))
    assert run_engine_function(f'pidfile_runs "{pid_file}" sleep', {}).returncode == 1
    assert run_engine_function(f'pidfile_runs "{tmp_path}/none.pid" sleep', {}).returncode == 1


def test_stale_containerd_state_is_cleared_and_the_reused_pid_left_alone(
    tmp_path: Path, unrelated_process: subprocess.Popen[bytes]
) -> None:
    state = tmp_path / "containerd"
    state.mkdir()
    (state / "containerd.pid").write_text(str(unrelated_process.pid))
    (state / "containerd.sock").touch()
    (state / "containerd.sock.ttrpc").touch()
    (state / "containerd.toml").write_text("# kept: dockerd rewrites it\n")
    dockerd_pid = tmp_path / "docker.pid"
    dockerd_pid.write_text(str(unrelated_process.pid))

    result = run_engine_function(
        "clear_stale_containerd",
        {"CONTAINERD_STATE": str(state), "DOCKERD_PIDFILE": str(dockerd_pid)},
    )

    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in state.iterdir()) == ["containerd.toml"]
    assert not dockerd_pid.exists()
    assert unrelated_process.poll() is None, "a process named by a stale pid file was killed"
