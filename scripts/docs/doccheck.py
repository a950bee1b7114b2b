"""What the documentation build checks and generates, as plain functions.

Used by the MkDocs hooks (``hooks.py``: the CLI and settings reference, the specification
pages) and by the doc checks (``tests/docs``): commands shown in the docs exist in the
``tgstack`` parser, the Makefile and the repository; OpenSpec scenarios name tests that exist.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SPECS = REPO / "openspec" / "specs"

# ----------------------------------------------------------------------------------------------
# The argparse tree of `tgstack`


@dataclass
class CommandNode:
    """A parser of the command tree: ``tgstack``, ``tgstack migrate``, ``tgstack config check``."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str = ""
    options: dict[str, argparse.Action] = field(default_factory=dict)
    positionals: list[argparse.Action] = field(default_factory=list)
    commands: dict[str, CommandNode] = field(default_factory=dict)
    command_required: bool = False

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def walk(self) -> Iterator[CommandNode]:
        yield self
        for child in self.commands.values():
            yield from child.walk()


def command_tree(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("tgstack",), help: str = ""
) -> CommandNode:
    node = CommandNode(path=path, parser=parser, help=help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            node.command_required = bool(action.required)
            for name, sub in action.choices.items():
                node.commands[name] = command_tree(sub, (*path, name), helps.get(name, ""))
        elif action.option_strings:
            for option in action.option_strings:
                node.options[option] = action
        else:
            node.positionals.append(action)
    return node


def tgstack_tree() -> CommandNode:
    from tgstack.cli import build_parser

    return command_tree(build_parser())


# ----------------------------------------------------------------------------------------------
# Shell commands shown in Markdown

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "shell-session", ""}
_INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", "|&", ";;"}
_WRAPPERS = {"sudo", "env", "exec", "time", "nohup", "command"}


@dataclass(frozen=True)
class ShownCommand:
    """A simple command found in a document: where, and its words."""

    source: str
    line: int
    argv: tuple[str, ...]

    def where(self) -> str:
        return f"{self.source}:{self.line}: {' '.join(self.argv)}"


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in an example: fall back to whitespace
        return text.split()


def simple_commands(text: str) -> Iterator[tuple[str, ...]]:
    """Split one shell line into simple commands, without env assignments and wrappers."""
    current: list[str] = []
    for word in [*_words(text), ";"]:
        if word in _OPERATORS or set(word) <= set(";&|()"):
            argv = _strip_prefix(current)
            if argv:
                yield tuple(argv)
            current = []
        else:
            current.append(word)


def _strip_prefix(words: list[str]) -> list[str]:
    index = 0
    while index < len(words):
        word = words[index]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
            index += 1
        elif word in _WRAPPERS:
            index += 1
            while index < len(words) and words[index].startswith("-"):
                # sudo -u USER, env -i ...
                index += 2 if words[index] in ("-u", "-g", "-C") else 1
        elif word == "$":
            index += 1
        else:
            break
    return words[index:]


def _fenced_shell_lines(text: str) -> Iterator[tuple[int, str]]:
    fence: str | None = None
    language = ""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(raw)
        if fence is None:
            if match:
                fence, language = match.group(2), match.group(3).lower()
            continue
        if match and match.group(2).startswith(fence[0]) and len(match.group(2)) >= len(fence):
            fence = None
            continue
        if language not in _SHELL_LANGUAGES:
            continue
        line = raw.strip()
        if language in ("console", "shell-session"):
            if not line.startswith("$ ") and not pending:
                continue
            line = line.removeprefix("$ ")
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        yield start, " ".join([*pending, line])
        pending = []


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    fence: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(raw)
        if fence is None and match:
            fence = match.group(2)
            continue
        if fence is not None:
            if match and match.group(2).startswith(fence[0]) and len(match.group(2)) >= len(fence):
                fence = None
            continue
        yield number, raw


def inline_code(text: str) -> Iterator[tuple[int, str]]:
    """Inline code spans outside fenced blocks, with their line numbers."""
    for number, line in _prose_lines(text):
        for match in _INLINE_CODE.finditer(line):
            yield number, match.group(1)


def shown_commands(text: str, source: str) -> Iterator[ShownCommand]:
    """Every simple command of the shell blocks and inline code spans of a document."""
    for number, line in _fenced_shell_lines(text):
        for argv in simple_commands(line):
            yield ShownCommand(source, number, argv)
    for number, span in inline_code(text):
        for argv in simple_commands(span):
            yield ShownCommand(source, number, argv)


def program(argv: tuple[str, ...]) -> str:
    return argv[0].rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------
# Checks of shown commands

_PLACEHOLDER = re.compile(r"^(\.\.\.|…|<.*>|\{.*\}|\$.*|[A-Z][A-Z0-9_]*|.*[…<>].*)$")


def check_tgstack(command: ShownCommand, tree: CommandNode) -> list[str]:
    """Subcommands and options of a shown ``tgstack`` command exist; literal choices are valid."""
    node = tree
    known = dict(tree.options)
    words = list(command.argv[1:])
    errors: list[str] = []
    while words:
        word = words.pop(0)
        if word.startswith("-") and word != "-":
            option, has_value, value = word.partition("=")
            action = node.options.get(option) or known.get(option)
            if action is None:
                errors.append(f"{command.where()}: '{node.name}' has no option {option}")
                continue
            if action.nargs == 0:
                continue
            if not has_value:
                if not words:
                    break
                value = words.pop(0)
            literal = not _PLACEHOLDER.match(value)
            if action.choices is not None and literal and value not in action.choices:
                errors.append(
                    f"{command.where()}: {option} of '{node.name}' takes one of "
                    f"{', '.join(map(str, action.choices))}, not {value!r}"
                )
            continue
        if node.commands:
            if word not in node.commands:
                errors.append(f"{command.where()}: '{node.name}' has no command {word!r}")
                return errors
            node = node.commands[word]
            known.update(node.options)
            continue
        # a positional argument (a file name, a placeholder): nothing to check
    return errors


def makefile_targets(makefile: Path = REPO / "Makefile") -> set[str]:
    targets: set[str] = set()
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-][A-Za-z0-9_.$()/ -]*?)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(name for name in match.group(1).split() if "$" not in name)
        if line.startswith(".PHONY:"):
            targets.update(line.removeprefix(".PHONY:").replace("\\", " ").split())
    return targets


def check_make(command: ShownCommand, targets: set[str]) -> list[str]:
    errors = []
    words = list(command.argv[1:])
    while words:
        word = words.pop(0)
        if word in ("-C", "-f", "-j"):
            words[:1] = []
            continue
        if word.startswith("-") or "=" in word or _PLACEHOLDER.match(word):
            continue
        if word not in targets:
            errors.append(f"{command.where()}: the Makefile has no target {word!r}")
    return errors


_VALUE_OPTIONS = {"-i", "--inventory", "-e", "--extra-vars", "-l", "--limit", "-t", "--tags",
                  "--skip-tags", "-u", "--user", "--vault-password-file", "-f", "--forks"}


def check_playbook(command: ShownCommand, repo: Path = REPO) -> list[str]:
    errors = []
    words = list(command.argv[1:])
    while words:
        word = words.pop(0)
        if word in _VALUE_OPTIONS:
            words[:1] = []
            continue
        if word.startswith("-"):
            continue
        if word.endswith((".yml", ".yaml")) and not (repo / word).is_file():
            errors.append(f"{command.where()}: no playbook {word} in the repository")
    return errors


_REPO_PATH = re.compile(
    r"^(?:ansible|roles|scripts|sql|tests|grafana/dashboards|inventories|molecule|docs|runtime|"
    r"openspec|filter_plugins|\.ci)(?:/[^\s]*)?$|^(?:Makefile|pyproject\.toml|ansible\.cfg|"
    r"requirements\.yml|"
    r"mkdocs\.yml|README\.md)$"
)


def repo_paths(text: str) -> Iterator[tuple[int, str]]:
    """Repository paths named in code (inline spans and words of shell/text blocks)."""
    candidates: list[tuple[int, str]] = list(inline_code(text))
    candidates += list(_fenced_shell_lines(text))
    for number, chunk in candidates:
        for word in re.split(r"[\s,;()\[\]\"'=]+", chunk):
            word = word.rstrip(".:").split("#", 1)[0].split("::", 1)[0]
            if _REPO_PATH.match(word) and not re.search(r"[<>{}$…]|\.\.\.", word):
                yield number, word


def created_paths(text: str) -> set[str]:
    """Paths a document tells the reader to create (``cp -r A B``, ``mkdir -p B``)."""
    created: set[str] = set()
    for _, line in _fenced_shell_lines(text):
        for argv in simple_commands(line):
            if program(argv) in ("cp", "mkdir", "install") and len(argv) > 1:
                created.add(argv[-1].rstrip("/"))
    return created


def check_repo_path(path: str, repo: Path = REPO) -> bool:
    if any(char in path for char in "*?"):
        return any(repo.glob(path))
    return (repo / path).exists()


_EXTERNAL = re.compile(r"\]\((https?://[^)\s]+)|<(https?://[^>\s]+)>")
_LOOPBACK = re.compile(r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)")


def external_links(text: str) -> Iterator[tuple[int, str]]:
    """Links to other hosts: the site is built and read offline, so there must be none."""
    for number, line in _prose_lines(text):
        for match in _EXTERNAL.finditer(line):
            url = match.group(1) or match.group(2)
            if not _LOOPBACK.match(url):
                yield number, url


# ----------------------------------------------------------------------------------------------
# OpenSpec specifications


@dataclass
class Scenario:
    title: str
    line: int
    body: list[str] = field(default_factory=list)

    @property
    def tests(self) -> list[str]:
        refs = []
        for line in self.body:
            refs += re.findall(r"`(tests/[\w/.-]+\.py::[\w:]+)`", line)
        return refs


@dataclass
class Requirement:
    title: str
    line: int
    text: list[str] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)


@dataclass
class Spec:
    capability: str
    path: Path
    title: str = ""
    purpose: list[str] = field(default_factory=list)
    requirements: list[Requirement] = field(default_factory=list)

    @property
    def scenarios(self) -> list[Scenario]:
        return [s for r in self.requirements for s in r.scenarios]


def parse_spec(path: Path) -> Spec:
    spec = Spec(capability=path.parent.name, path=path)
    section = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("# "):
            spec.title = line[2:].strip()
        elif line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("### Requirement:"):
            spec.requirements.append(Requirement(line.split(":", 1)[1].strip(), number))
        elif line.startswith("#### Scenario:"):
            spec.requirements[-1].scenarios.append(Scenario(line.split(":", 1)[1].strip(), number))
        elif section == "Purpose":
            spec.purpose.append(line)
        elif spec.requirements and spec.requirements[-1].scenarios:
            spec.requirements[-1].scenarios[-1].body.append(line)
        elif spec.requirements:
            spec.requirements[-1].text.append(line)
    return spec


def load_specs(root: Path = SPECS) -> list[Spec]:
    return [parse_spec(path) for path in sorted(root.glob("*/spec.md"))]


def defined_tests(path: Path) -> set[str]:
    """Test functions of a pytest file: ``test_x`` and ``TestClass::test_x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return {name for name in names if name.rsplit("::", 1)[-1].startswith("test")}


def check_test_reference(reference: str, repo: Path = REPO) -> str | None:
    """None when ``tests/x.py::test_name`` exists, else why not."""
    file, _, name = reference.partition("::")
    path = repo / file
    if not path.is_file():
        return f"{reference}: no file {file}"
    if name not in defined_tests(path):
        return f"{reference}: {file} defines no test {name}"
    return None
