"""What `make docs` checks beyond `mkdocs build --strict` and `openspec validate --strict`.

Every `tgstack …` command shown in the docs exists in the argparse tree, every `make <target>`
exists in the Makefile, every playbook and repository path exists, no page links to another
host, and every test an OpenSpec scenario names exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from doccheck import (
    DOCS,
    REPO,
    CommandNode,
    ShownCommand,
    check_make,
    check_playbook,
    check_repo_path,
    check_test_reference,
    check_tgstack,
    created_paths,
    external_links,
    load_specs,
    makefile_targets,
    program,
    repo_paths,
    shown_commands,
    tgstack_tree,
)

PAGES = sorted(DOCS.rglob("*.md"))
DOCUMENTS = [*PAGES, REPO / "README.md"]


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _commands(tool: str) -> list[ShownCommand]:
    return [
        command
        for document in DOCUMENTS
        for command in shown_commands(document.read_text(), _name(document))
        if program(command.argv) == tool
    ]


@pytest.fixture(scope="module")
def tree() -> CommandNode:
    return tgstack_tree()


def test_the_docs_show_tgstack_commands(tree: CommandNode) -> None:
    shown = {" ".join(c.argv[:2]) for c in _commands("tgstack")}
    assert len(shown) >= 10, shown


def test_every_tgstack_command_in_the_docs_exists_in_the_parser(tree: CommandNode) -> None:
    errors = [error for command in _commands("tgstack") for error in check_tgstack(command, tree)]
    assert not errors, "\n".join(errors)


def test_the_checker_catches_a_made_up_command_and_option(tree: CommandNode) -> None:
    shown = list(shown_commands("`tgstack migrate --dry-run` and `tgstack frobnicate`", "t.md"))
    errors = [error for command in shown for error in check_tgstack(command, tree)]
    assert len(errors) == 2, errors
    shown = list(shown_commands("```sh\n$ sudo -u tgstack tgstack poller --mode fast\n```", "t"))
    assert [program(c.argv) for c in shown] == ["tgstack"]
    assert check_tgstack(shown[0], tree), "an invalid --mode choice must be reported"


def test_every_make_target_in_the_docs_exists() -> None:
    targets = makefile_targets()
    errors = [error for command in _commands("make") for error in check_make(command, targets)]
    assert not errors, "\n".join(errors)


def test_every_playbook_in_the_docs_exists() -> None:
    commands = _commands("ansible-playbook")
    assert commands, "the deployment guide shows ansible-playbook commands"
    errors = [error for command in commands for error in check_playbook(command)]
    assert not errors, "\n".join(errors)


def test_every_repository_path_in_the_docs_exists() -> None:
    created = {path for document in DOCUMENTS for path in created_paths(document.read_text())}

    def made_by_reader(path: str) -> bool:
        return any(path == made or path.startswith(made + "/") for made in created)

    missing = [
        f"{_name(document)}:{line}: {path}"
        for document in DOCUMENTS
        for line, path in repo_paths(document.read_text())
        if not check_repo_path(path) and not made_by_reader(path) and path not in PENDING
    ]
    assert not missing, "\n".join(missing)


# Files another issue is writing, named by a page that says so (a warning box on the page).
# Allowed whether they exist yet or not; drop an entry, and the page's warning, once it landed.
PENDING: dict[str, str] = {}


def test_no_page_links_to_another_host() -> None:
    found = [
        f"{_name(page)}:{line}: {url}"
        for page in PAGES
        for line, url in external_links(page.read_text())
    ]
    assert not found, "the site is read offline; link within the site:\n" + "\n".join(found)


def test_the_built_site_loads_nothing_from_another_host() -> None:
    site = REPO / ".cache" / "site"
    if not (site / "index.html").is_file():
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"],
            cwd=REPO, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        )
    remote = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?(https?://[^"')\s>]+)""")
    found = [
        f"{page.relative_to(site)}: {url}"
        for page in sorted(site.rglob("*.html"))
        for url in remote.findall(page.read_text(errors="replace"))
        if not re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", url)
    ]
    assert not found, "\n".join(found[:20])


def test_every_diagram_source_is_shown_on_a_page() -> None:
    text = "\n".join(page.read_text() for page in PAGES)
    for source in sorted((DOCS / "diagrams").glob("*.puml")):
        assert f"diagrams/{source.stem}.svg" in text, f"{source.name} is rendered but not shown"


SPECS = load_specs()
CAPABILITIES = {
    "telegram-gateway-mtproto",
    "telegram-gateway-api",
    "tp-capital-polling",
    "telegram-timescaledb-dedicated",
    "telegram-pgbouncer",
    "telegram-redis-cluster",
    "telegram-rabbitmq-queue",
    "telegram-monitoring-stack",
}


def test_there_is_a_spec_per_capability() -> None:
    assert {spec.capability for spec in SPECS} == CAPABILITIES


@pytest.mark.parametrize("spec", SPECS, ids=[spec.capability for spec in SPECS])
def test_every_scenario_names_tests_that_exist(spec: object) -> None:
    from doccheck import Spec

    assert isinstance(spec, Spec)
    assert spec.scenarios, f"{spec.capability} has no scenario"
    errors = []
    for scenario in spec.scenarios:
        where = f"{_name(spec.path)}:{scenario.line} ({scenario.title})"
        if not scenario.tests:
            errors.append(f"{where}: names no test (- **Test:** `tests/...py::test_name`)")
        errors += [
            f"{where}: {problem}"
            for reference in scenario.tests
            if (problem := check_test_reference(reference)) is not None
        ]
    assert not errors, "\n".join(errors)


def test_every_requirement_is_a_shall_statement() -> None:
    weak = [
        f"{_name(spec.path)}:{requirement.line}: {requirement.title}"
        for spec in SPECS
        for requirement in spec.requirements
        if not any("SHALL" in line or "MUST" in line for line in requirement.text)
    ]
    assert not weak, "\n".join(weak)


def test_the_monitoring_guide_covers_every_dashboard_and_alert() -> None:
    guide = (DOCS / "monitoring.md").read_text()
    dashboards = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    missing = [path.name for path in dashboards if f"(`{path.name}`)" not in guide]
    rules = REPO / "roles" / "tgstack_monitoring" / "files" / "prometheus" / "rules"
    text = "\n".join(path.read_text() for path in rules.glob("*.yml"))
    alerts = re.findall(r"^\s*- alert: (\w+)", text, flags=re.MULTILINE)
    assert alerts
    missing += [name for name in alerts if f"| {name} |" not in guide or f"### {name}" not in guide]
    assert not missing, f"docs/monitoring.md lacks: {missing}"
