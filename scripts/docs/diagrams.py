"""Render the PlantUML diagrams of the docs to SVG with the local ``plantuml`` (offline).

Every ``docs/diagrams/*.puml`` becomes ``diagrams/<name>.svg`` in the site. Renders are cached
by content in ``.cache/docs/plantuml`` so a rebuild only runs Java for diagrams that changed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from doccheck import REPO

CACHE = REPO / ".cache" / "docs" / "plantuml"
# Text PlantUML draws into the picture instead of failing when something is wrong.
_FAILURE_MARKERS = (
    "Syntax Error", "Cannot find Graphviz", "Dot executable", "An error has occured",
)


class DiagramError(RuntimeError):
    """A diagram could not be rendered; the message names it and says why."""


def _key(source: Path) -> str:
    return hashlib.sha256(b"svg-v1\0" + source.read_bytes()).hexdigest()[:24]


def render(sources: list[Path], cache: Path = CACHE) -> dict[str, bytes]:
    """SVG bytes by diagram name; renders what the cache lacks in one PlantUML run."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [source for source in sources if not (cache / f"{_key(source)}.svg").is_file()]
    if missing:
        _run_plantuml(missing, cache)
    return {source.stem: (cache / f"{_key(source)}.svg").read_bytes() for source in sources}


def _run_plantuml(sources: list[Path], cache: Path) -> None:
    plantuml = shutil.which("plantuml")
    if plantuml is None:
        raise DiagramError(
            "plantuml is not installed: run scripts/install-system-deps.sh "
            "(Debian packages plantuml and graphviz)"
        )
    with tempfile.TemporaryDirectory(prefix="tgstack-puml-") as tmp:
        work = Path(tmp)
        for source in sources:
            shutil.copyfile(source, work / f"{_key(source)}.puml")
        result = subprocess.run(
            [plantuml, "-tsvg", "-charset", "UTF-8", "-failfast2", "-nbthread", "1",
             *sorted(str(path) for path in work.glob("*.puml"))],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={"PATH": "/usr/bin:/bin", "JAVA_TOOL_OPTIONS": "-Djava.awt.headless=true",
                 "LANG": "C.UTF-8"},
        )
        for source in sources:
            svg = work / f"{_key(source)}.svg"
            text = svg.read_text(errors="replace") if svg.is_file() else ""
            marker = next((m for m in _FAILURE_MARKERS if m in text), None)
            if result.returncode != 0 or not text or marker:
                detail = (result.stderr or result.stdout or marker or "no output").strip()
                for other in sources:
                    detail = detail.replace(str(work / _key(other)), other.stem)
                name = source.resolve().relative_to(REPO)
                raise DiagramError(f"{name}: PlantUML failed: {detail[-800:]}")
            shutil.copyfile(svg, cache / svg.name)
