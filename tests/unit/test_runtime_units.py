"""The systemd units of role tgstack_runtime, rendered by Ansible from the role itself and
scored offline with ``systemd-analyze security`` (the issue's bar: exposure <= 1.5).

The same score is checked on a deployed server by tests/infra/test_runtime.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "tests" / "unit" / "render_runtime_units.yml"
# The gateway is a template unit: one instance per Telegram account (tgstack-gateway@NAME).
UNITS = ("tgstack-gateway@", "tgstack-poller", "tgstack-api")
MAX_EXPOSURE = 1.5


def _render(directory: Path, *extra: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "filter_plugins"),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    done = subprocess.run(
        [
            str(venv_bin / "ansible-playbook"),
            str(PLAYBOOK),
            "-e",
            f"tgstack_runtime_systemd_dir={directory}",
            *extra,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return {unit: directory / f"{unit}.service" for unit in UNITS}


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _render(tmp_path_factory.mktemp("units"))


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd (>= 252 for --offline)")
    return path


def exposure(unit_file: Path) -> tuple[float, str]:
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, f"systemd-analyze printed no score:\n{done.stdout[-2000:]}{done.stderr}"
    return float(match.group(1)), done.stdout


def service_section(unit_file: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for line in unit_file.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", UNITS)
def test_unit_scores_at_most_1_5_in_systemd_analyze_security(
    units: dict[str, Path], unit: str
) -> None:
    score, report = exposure(units[unit])
    assert score <= MAX_EXPOSURE, report


def test_a_unit_without_the_hardening_scores_far_worse(
    units: dict[str, Path], tmp_path: Path
) -> None:
    # The score above is earned by the hardening lines, not by the tool's leniency.
    plain = tmp_path / "tgstack-plain.service"
    kept = [
        line
        for line in units["tgstack-api"].read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "System", "Capability"))
    ]
    plain.write_text("\n".join(kept) + "\n")
    assert exposure(plain)[0] > 5.0


@pytest.mark.parametrize("unit", UNITS)
def test_unit_restarts_on_failure_after_10_s_logs_to_the_journal_and_is_limited(
    units: dict[str, Path], unit: str
) -> None:
    service = service_section(units[unit])
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["10"]
    assert service["SyslogIdentifier"] == [unit + "%i" if unit.endswith("@") else unit]
    assert service["StandardOutput"] == ["journal"]
    assert service["User"] == ["tgstack"]
    for limit in ("MemoryMax", "CPUQuota", "TasksMax", "LimitNOFILE"):
        assert service[limit][0], limit
    assert service["Environment"][0] == "TGSTACK_ENV_FILE=/etc/tgstack/tgstack.env"


def test_gateway_stays_down_on_exit_78_and_only_it_may_write_state(
    units: dict[str, Path],
) -> None:
    gateway = service_section(units["tgstack-gateway@"])
    assert "78" in gateway["RestartPreventExitStatus"][0].split()
    assert gateway["ReadWritePaths"] == ["/var/lib/tgstack"]
    for other in ("tgstack-poller", "tgstack-api"):
        assert "ReadWritePaths" not in service_section(units[other])


def test_only_a_telethon_gateway_may_reach_beyond_loopback(tmp_path: Path) -> None:
    telethon = service_section(_render(tmp_path / "telethon")["tgstack-gateway@"])
    spool = _render(tmp_path / "spool", "-e", "tgstack_runtime_gateway_source=spool")
    assert telethon["IPAddressAllow"] == ["any"]
    assert service_section(spool["tgstack-gateway@"])["IPAddressAllow"] == ["localhost"]
    assert service_section(spool["tgstack-api"])["IPAddressAllow"] == ["localhost"]
    assert all(exposure(path)[0] <= MAX_EXPOSURE for path in spool.values())


def test_the_gateway_is_a_template_run_once_per_account(units: dict[str, Path]) -> None:
    gateway = service_section(units["tgstack-gateway@"])
    assert gateway["ExecStart"] == ["/opt/tgstack/runtime/venv/bin/tgstack --account %i gateway"]
    assert not (units["tgstack-gateway@"].parent / "tgstack-gateway.service").exists()
