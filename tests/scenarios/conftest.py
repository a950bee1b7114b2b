"""Shared helpers of the Molecule scenario checks (tests/scenarios/<scenario>/).

These run as the scenario's testinfra verifier: ``host`` is the instance (Molecule's inventory),
playbooks are run with ``ansible-playbook`` against the same inventory, and figures are printed
(the verifier runs pytest with -s). They are not part of `pytest` runs of the repository: they
need a converged instance.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME_CLI = "/opt/tgstack/runtime/venv/bin/tgstack"
ENV_FILE = "/etc/tgstack/tgstack.env"


def ephemeral_dir() -> Path:
    value = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not value:
        pytest.fail("MOLECULE_EPHEMERAL_DIRECTORY is not set: run this through `molecule verify`")
    return Path(value)


@dataclass(frozen=True)
class PlaybookRun:
    rc: int
    output: str
    seconds: float
    changed: int
    failed: int

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RECAP = re.compile(r"^\S+\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run_playbook(playbook: str, *extra: str, timeout: float = 1800) -> PlaybookRun:
    """ansible-playbook ansible/<playbook> against the scenario's inventory, from the repo root."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.fail("MOLECULE_INVENTORY_FILE is not set: run this through `molecule verify`")
    command = ["ansible-playbook", "-i", inventory, str(REPO / "ansible" / playbook), *extra]
    # Molecule forces colour for its own runs; the recap is parsed here, so no colour.
    env = os.environ | {"ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = _ANSI.sub("", done.stdout + done.stderr)
    recap = _RECAP.findall(output)
    if not recap:
        pytest.fail(f"no PLAY RECAP in the output of {playbook}:\n{output[-3000:]}")
    changed = sum(int(r[1]) for r in recap)
    failed = sum(int(r[3]) + int(r[2]) for r in recap)
    return PlaybookRun(done.returncode, output, time.monotonic() - started, changed, failed)


def changed_tasks(run: PlaybookRun) -> list[str]:
    """Names of the tasks that reported a change (default callback output)."""
    names, current = [], ""
    for line in run.output.splitlines():
        if line.startswith("TASK ["):
            current = line[6 : line.rfind("]")]
        elif line.startswith("changed:"):
            names.append(current)
    return names


def sh(host: Any, command: str, *, check: bool = True) -> str:
    """Run a shell command on the instance as root; its stdout (stripped)."""
    with host.sudo():
        result = host.run(command)
    if check and result.rc != 0:
        pytest.fail(f"`{command[:200]}` failed ({result.rc}): {result.stderr.strip()[:800]}")
    return str(result.stdout).strip()


def new_sql(host: Any, query: str) -> str:
    """A query on the new database (superuser, through the container's socket)."""
    return sh(
        host,
        "docker exec -u postgres tgstack-postgres psql -X -At -v ON_ERROR_STOP=1"
        f" -d telegram_gateway -c {shlex.quote(query)}",
    )


def new_scalar(host: Any, query: str) -> int:
    return int(new_sql(host, query).splitlines()[-1])


def wait_for(
    what: str, probe: Callable[[], Any], *, timeout: float, interval: float = 1.0
) -> tuple[Any, float]:
    """Call probe until it returns something truthy; (value, seconds waited)."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        last = probe()
        if last:
            return last, time.monotonic() - started
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def drop_spool_file(host: Any, name: str, *, count: int, first_id: int, seed: int) -> None:
    """Write `count` synthetic posts into the gateway's spool directory, atomically."""
    spool = sh(host, f"sed -n 's/^TGSTACK_GATEWAY_SPOOL_DIR=//p' {ENV_FILE}")
    tmp = f"{spool}/.{name}.partial"
    sh(
        host,
        f"{RUNTIME_CLI} synthetic --count {count} --first-id {first_id} --seed {seed}"
        f" > {tmp} && chmod 0644 {tmp} && mv {tmp} {spool}/{name}.jsonl",
    )


def print_figure(label: str, value: object) -> None:
    print(f"  [figure] {label}: {value}", flush=True)


def json_of(text: str) -> Any:
    return json.loads(text)
