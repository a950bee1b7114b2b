"""Ansible collections: requirements.yml pins each one exactly, the playbooks use no other, and
the Ansible the lock installs resolves each to exactly its pinned version.

The locked `ansible` package bundles the collections, so a controller without Galaxy access
(this testbed, CI) runs the pinned versions; a controller that installs ansible-core alone runs
`ansible-galaxy collection install -r requirements.yml`. A collection installed elsewhere on the
search path (~/.ansible/collections) would shadow the bundled one: that fails here too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GALAXY = Path(sys.executable).with_name("ansible-galaxy")
USED = re.compile(r"\b((?:ansible|community)\.[a-z_]+)\.[a-z_]+\b")
PLAYBOOK_DIRS = ("roles", "ansible", "molecule")


def _pinned() -> dict[str, str]:
    wanted = yaml.safe_load((REPO / "requirements.yml").read_text())
    return {entry["name"]: str(entry["version"]) for entry in wanted["collections"]}


def test_every_collection_is_pinned_to_one_exact_version():
    for name, version in _pinned().items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: {version!r} is not one version"


def test_the_playbooks_use_only_pinned_collections():
    used = set()
    for top in PLAYBOOK_DIRS:
        for path in (REPO / top).rglob("*.yml"):
            used |= set(USED.findall(path.read_text()))
    used.discard("ansible.builtin")
    assert used, "no collection module found: the pattern is wrong"
    assert used <= _pinned().keys(), f"not in requirements.yml: {sorted(used - _pinned().keys())}"


def test_ansible_resolves_each_collection_to_its_pinned_version():
    done = subprocess.run(
        [str(GALAXY), "collection", "list", "--format", "json"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    found: dict[str, str] = {}
    # Paths come in search order: the first one holding a collection is the one Ansible loads.
    for collections in json.loads(done.stdout).values():
        for name, meta in collections.items():
            found.setdefault(name, meta["version"])
    assert {name: found.get(name) for name in _pinned()} == _pinned()
