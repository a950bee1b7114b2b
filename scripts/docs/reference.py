"""Pages generated from the code at build time: the CLI and settings reference, the specs."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from doccheck import CommandNode, Spec, load_specs, tgstack_tree

_WIDTH = 96


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _usage(parser: argparse.ArgumentParser) -> str:
    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog, width=_WIDTH)

    parser.formatter_class = formatter
    return parser.format_usage().removeprefix("usage: ").strip()


def _argument_rows(node: CommandNode) -> list[str]:
    rows = []
    seen: set[int] = set()
    for action in node.positionals:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = action.metavar or action.dest
        rows.append(f"| `{name}` | {_cell(action.help or '')} | required |")
    for action in node.options.values():
        if id(action) in seen or isinstance(action, argparse._HelpAction):
            continue
        seen.add(id(action))
        names = ", ".join(f"`{name}`" for name in action.option_strings)
        if action.nargs != 0:
            value = action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}"
                if action.choices
                else action.dest.upper()
            )
            names += f" `{value}`"
        default = action.default
        shown = (
            "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0
            else f"`{default}`"
        )
        rows.append(f"| {names} | {_cell(action.help or '')} | {shown} |")
    return rows


def cli_markdown() -> str:
    """The ``tgstack`` command reference, walked from ``tgstack.cli.build_parser``."""
    tree = tgstack_tree()
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated at build time from tgstack.cli.build_parser (scripts/docs/reference.py); "
        "do not edit. -->",
        "",
        "Generated from the argument parser of `tgstack` when the site is built, so it lists",
        "exactly what the installed command accepts. Exit status: 0 success, 1 a runtime failure,",
        "2 a usage or configuration error (one line on stderr naming the setting), 78 a fatal",
        "gateway error that systemd must not restart (a revoked or missing Telegram session).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    runnable = [node for node in tree.walk() if node is not tree and not node.commands]
    for node in runnable:
        lines.append(f"| [`{node.name}`](#{_anchor(node)}) | {_cell(node.help)} |")
    lines += ["", "## tgstack", "", tree.parser.description or "", "", "```text",
              _usage(tree.parser), "```", ""]
    rows = _argument_rows(tree)
    if rows:
        lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    for node in tree.walk():
        if node is tree:
            continue
        lines += [f"## {node.name} {{#{_anchor(node)}}}", "", _cell(node.help), "", "```text",
                  _usage(node.parser), "```", ""]
        rows = _argument_rows(node)
        if rows:
            lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
        if node.commands:
            lines += ["Commands: " + ", ".join(
                f"[`{child.name}`](#{_anchor(child)})" for child in node.commands.values()), ""]
    lines += settings_markdown()
    return "\n".join(lines) + "\n"


def _anchor(node: CommandNode) -> str:
    return "-".join(node.path)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " \\| ".join(names)
    if origin is typing.Literal:
        return " \\| ".join(f"`{arg}`" for arg in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])} (comma separated)"
    if isinstance(annotation, type):
        return {"SecretStr": "secret", "PosixPath": "path", "Path": "path"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def settings_markdown() -> list[str]:
    """Every ``TGSTACK_*`` variable, from ``tgstack.config.Settings``."""
    from tgstack.config import Settings, env_name

    lines = [
        "## Settings",
        "",
        "Every command reads the same settings: `TGSTACK_*` environment variables, and the env",
        "file given by `--env-file PATH` or `TGSTACK_ENV_FILE` (mode 0600, `KEY=value` lines).",
        "`tgstack config check` prints them with secrets masked. Generated from",
        "`tgstack.config.Settings`.",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        default: Any = info.get_default(call_default_factory=True)
        shown = "" if default is None or default == [] else f"`{default}`"
        limits = [
            f"{key} {getattr(meta, attr)}"
            for meta in info.metadata
            for key, attr in (("≥", "ge"), (">", "gt"), ("≤", "le"))
            if getattr(meta, attr, None) is not None
        ]
        meaning = info.description or ""
        if limits:
            meaning = f"{meaning} ({', '.join(limits)})" if meaning else ", ".join(limits)
        lines.append(
            f"| `{env_name(name)}` | {_type_name(info.annotation)} | {shown} | {_cell(meaning)} |"
        )
    return [*lines, ""]


def spec_page(spec: Spec) -> str:
    """A specification as a site page: the spec file itself, with its origin."""
    text = spec.path.read_text()
    source = spec.path.relative_to(spec.path.parents[2]).as_posix()
    header, _, rest = text.partition("\n")
    note = (
        f"\n\n!!! note \"Source\"\n    `{source}` — validated by `openspec validate --strict`; "
        "every scenario names the test that proves it.\n"
    )
    return header + note + rest


def specs_index(specs: list[Spec]) -> str:
    lines = [
        "# Specifications",
        "",
        "One OpenSpec specification per capability (`openspec/specs/<capability>/spec.md`).",
        "Each requirement is a SHALL statement; each scenario names the test that proves it",
        "(`tests/...py::test_name`), and `make docs` checks that every named test exists.",
        "",
        "| capability | requirements | scenarios | tests named |",
        "|---|---|---|---|",
    ]
    for spec in specs:
        tests = {ref for scenario in spec.scenarios for ref in scenario.tests}
        lines.append(
            f"| [{spec.capability}]({spec.capability}.md) | {len(spec.requirements)} | "
            f"{len(spec.scenarios)} | {len(tests)} |"
        )
    total_r = sum(len(s.requirements) for s in specs)
    total_s = sum(len(s.scenarios) for s in specs)
    lines.append(f"| **total** | **{total_r}** | **{total_s}** | |")
    return "\n".join(lines) + "\n"


def spec_pages() -> dict[str, str]:
    """``specs/index.md`` and ``specs/<capability>.md`` for every spec."""
    specs = load_specs()
    pages = {"specs/index.md": specs_index(specs)}
    for spec in specs:
        pages[f"specs/{spec.capability}.md"] = spec_page(spec)
    return pages
