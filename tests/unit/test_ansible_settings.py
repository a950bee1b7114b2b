"""The Ansible roles' settings have one source each (issue 18): a variable is defined in one role's
defaults, nothing repeats that default with `| default(...)`, every role's argument specs agree
with its defaults, and the testinfra checks read the same files."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(
    p for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file()
)
# A variable read with a fallback: `name | default(` (not an attribute such as ansible_local.name).
DEFAULTED = re.compile(r"(?<![\w.])(tgstack_\w+)\s*\|\s*default\(")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def role_defaults(role: Path) -> dict[str, Any]:
    path = role / "defaults" / "main.yml"
    return (load_yaml(path) or {}) if path.is_file() else {}


def templated(value: Any) -> bool:
    return "{{" in yaml.safe_dump(value)


def defined_by() -> dict[str, str]:
    owners: dict[str, str] = {}
    for role in ROLES:
        for name in role_defaults(role):
            owners.setdefault(name, role.name)
    return owners


def test_every_role_variable_is_defined_in_one_role_only() -> None:
    seen: dict[str, list[str]] = {}
    for role in ROLES:
        for name in role_defaults(role):
            seen.setdefault(name, []).append(role.name)
    assert {name: roles for name, roles in seen.items() if len(roles) > 1} == {}


def test_no_role_or_playbook_repeats_a_default_defined_in_a_role() -> None:
    owners = defined_by()
    files = [
        *(REPO / "roles").rglob("*.yml"),
        *(REPO / "roles").rglob("*.j2"),
        *(REPO / "ansible").rglob("*.yml"),
    ]
    repeated = [
        f"{path.relative_to(REPO)}: {name} (defined by {owners[name]})"
        for path in files
        for name in DEFAULTED.findall(path.read_text(encoding="utf-8"))
        if name in owners
    ]
    assert repeated == []


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_argument_specs_agree_with_the_defaults(role: Path) -> None:
    defaults = role_defaults(role)
    options = load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(set(defaults) - set(options)) == [], "defaults without an argument spec"
    for name, spec in options.items():
        if "default" in spec:
            assert name in defaults, f"{name}: a spec default but no defaults/main.yml entry"
            assert spec["default"] == defaults[name], (
                f"{name}: spec default differs from defaults/main.yml"
            )
        elif name in defaults and not templated(defaults[name]):
            assert isinstance(defaults[name], (list, dict)), (
                f"{name}: plain default missing from the spec"
            )


def test_shared_settings_are_specified_only_where_they_are_defined() -> None:
    shared = set(role_defaults(REPO / "roles" / "tgstack"))
    elsewhere = [
        f"{role.name} {entry}: {name}"
        for role in ROLES
        if role.name != "tgstack"
        for entry, spec in load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"].items()
        for name in spec.get("options") or {}
        if name in shared
    ]
    assert elsewhere == []


def test_roles_reading_shared_settings_depend_on_the_role_that_defines_them() -> None:
    shared = set(role_defaults(REPO / "roles" / "tgstack"))
    missing = []
    for role in ROLES:
        if role.name == "tgstack":
            continue
        text = "\n".join(
            p.read_text(encoding="utf-8") for p in role.rglob("*") if p.suffix in {".yml", ".j2"}
        )
        reads = {name for name in re.findall(r"\btgstack_\w+", text) if name in shared}
        meta = load_yaml(role / "meta" / "main.yml")
        depends = [d["role"] if isinstance(d, dict) else d for d in meta.get("dependencies") or []]
        if reads and "tgstack" not in depends:
            missing.append(f"{role.name} reads {sorted(reads)}")
    assert missing == []


def infra_conftest() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tgstack_infra_conftest", REPO / "tests" / "infra" / "conftest.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_testinfra_settings_are_the_role_defaults_unless_the_inventory_sets_them() -> None:
    conftest = infra_conftest()
    shared = role_defaults(REPO / "roles" / "tgstack")
    stack = role_defaults(REPO / "roles" / "tgstack_stack")
    defaults = conftest.stack_settings({})
    assert defaults.postgres_port == shared["tgstack_stack_postgres_port"]
    assert defaults.sentinel_ports == tuple(shared["tgstack_stack_redis_sentinel_ports"])
    assert defaults.service_user == shared["tgstack_host_user"]
    assert defaults.delivery_limit == stack["tgstack_stack_rabbitmq_delivery_limit"]
    inventory = {"tgstack_stack_postgres_port": "5500", "tgstack_bind_address": "{{ a_template }}"}
    overridden = conftest.stack_settings(inventory)
    assert overridden.postgres_port == 5500
    assert overridden.bind_address == shared["tgstack_bind_address"]
