"""MkDocs hooks of the tgstack site (``hooks:`` in mkdocs.yml).

At build time they add pages generated from the code — the CLI and settings reference (from
``tgstack.cli.build_parser`` and ``tgstack.config.Settings``) and the OpenSpec specifications —
and the SVG of every ``docs/diagrams/*.puml``, rendered offline by the local PlantUML.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diagrams
import reference
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files


def _add(files: Files, generated: File) -> None:
    existing = files.get_file_from_path(generated.src_uri)
    if existing is not None:
        files.remove(existing)
    files.append(generated)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    _add(files, File.generated(config, "reference/cli.md", content=reference.cli_markdown()))
    for uri, page in reference.spec_pages().items():
        _add(files, File.generated(config, uri, content=page))
    sources = sorted((Path(config.docs_dir) / "diagrams").glob("*.puml"))
    try:
        rendered = diagrams.render(sources)
    except diagrams.DiagramError as exc:
        raise PluginError(str(exc)) from None
    for name, svg in rendered.items():
        _add(files, File.generated(config, f"diagrams/{name}.svg", content=svg))
    return files
