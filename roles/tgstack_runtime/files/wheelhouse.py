#!/usr/bin/env python3
"""Build, on the controller, the wheelhouse a server installs tgstack from without an index.

    wheelhouse.py --project DIR --requirements DIR/requirements/runtime.txt --cache DIR \
        --python-version 3.13.5 --machine x86_64 --glibc 2.41

Writes ``<cache>/<tag>/<hash>/`` (tag: ``cp313-manylinux_2_41_x86_64``; hash: of the inputs
below) holding the tgstack wheel built from DIR and exactly the dependencies the lock names
for that interpreter and platform: ``--requirements`` is the lock's runtime export (exact
versions, every file's sha256), its environment markers are evaluated for the target, and pip
downloads each version with ``--require-hashes``. A locked dependency published only as an
sdist (pyaes) is downloaded the same way and built here into a py3-none-any wheel.
``requirements.txt`` pins each wheel with the sha256 of the file shipped, so the server's pip
installs with hash checking too; ``SHA256SUMS`` and ``wheelhouse.tar`` (the same files, for one
copy to the server) complete it. The inputs (project sources, the lock export, target, this
script) are hashed: when a build of that hash exists nothing is done, so a rerun is instant
and changes nothing. The newest few builds per tag are kept (a sandbox and a Molecule scenario
may deploy different versions of the tree without rebuilding each other's).
Prints one JSON object: {"changed": bool, "dir": ..., "tar": ..., "sha256": ..., "wheels": [...]}.
The cache is locked while building: parallel runs (several Molecule scenarios) share it.

``--print-pins`` prints only what the lock gives a target (name -> version, JSON): what the
deployed server's ``pip freeze`` must equal.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

FORMAT = 3  # bump when the layout of a built wheelhouse changes
KEEP_BUILDS = 4  # builds kept per target tag
SOURCE_PATHS = ("pyproject.toml", "README.md", "LICENSE", "runtime", "sql")
_MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)(\S*)")


class WheelhouseError(RuntimeError):
    pass


def source_files(project: Path) -> list[str]:
    """The files the wheel is built from: in a git checkout the tracked ones (as they are in
    the working tree; a new module must be `git add`ed to be deployed), else every file under
    the source paths."""
    done = subprocess.run(
        ["git", "-C", str(project), "ls-files", "-z", "--cached", "--", *SOURCE_PATHS],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode == 0:
        names = {n for n in done.stdout.decode().split("\0") if n}
    else:
        names = {
            p.relative_to(project).as_posix()
            for top in SOURCE_PATHS
            for p in [project / top, *(project / top).rglob("*")]
            if p.is_file() or p.is_symlink()
        }
    skip = ("__pycache__", ".egg-info")
    return sorted(
        n for n in names
        if not any(part in n for part in skip) and os.path.lexists(project / n)
    )  # fmt: skip


def source_hash(project: Path, files: list[str], target: str, requirements: Path) -> str:
    digest = hashlib.sha256(f"format={FORMAT} target={target}\n".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(hashlib.sha256(requirements.read_bytes()).digest())
    for name in files:
        path = project / name
        content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(f"{name}\0{path.is_symlink()}\0".encode())
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def target_environment(python_version: str, machine: str) -> dict[str, str]:
    """PEP 508 marker values of CPython ``python_version`` (3.13.5) on Linux ``machine``."""
    minor = ".".join(python_version.split(".")[:2])
    return {
        "implementation_name": "cpython",
        "implementation_version": python_version,
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": python_version,
        "python_version": minor,
        "sys_platform": "linux",
    }


def locked_requirements(text: str, environment: dict[str, str]) -> list[str]:
    """The requirement blocks of a hashed lock export that apply in ``environment``, each as
    one line ``name==version --hash=... --hash=...`` without its marker."""
    try:
        from packaging.markers import Marker
    except ImportError:  # a controller Python without packaging still has pip's copy
        from pip._vendor.packaging.markers import Marker  # type: ignore[assignment]

    blocks: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip().removesuffix("\\").strip()
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace():
            if not blocks:
                raise WheelhouseError(f"unexpected continuation line in the lock: {raw.strip()}")
            blocks[-1].extend(line.split())
        else:
            blocks.append([line])
    kept = []
    for spec, *options in blocks:
        requirement, _, marker = (part.strip() for part in spec.partition(";"))
        hashes = [option for option in options if option.startswith("--hash=")]
        if "==" not in requirement or not hashes:
            raise WheelhouseError(f"the lock must pin {requirement} exactly, with hashes")
        if marker and not Marker(marker).evaluate(environment):
            continue
        kept.append(" ".join([requirement, *hashes]))
    return kept


def locked_pins(text: str, environment: dict[str, str]) -> dict[str, str]:
    """Normalised name -> version of every locked requirement that applies in ``environment``."""
    pins = {}
    for line in locked_requirements(text, environment):
        name, _, version = line.split(" ", 1)[0].partition("==")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def copy_sources(project: Path, files: list[str], dest: Path) -> None:
    """A clean copy to build from: the build writes egg-info and build/ there, not in DIR."""
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / name, target, follow_symlinks=False)


def platforms(machine: str, glibc: str) -> list[str]:
    """Every manylinux tag a glibc of this version runs (pip does not expand them itself)."""
    major, minor = (int(part) for part in glibc.split(".")[:2])
    if major != 2:
        raise WheelhouseError(f"unexpected glibc version {glibc}")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{machine}" for floor, name in legacy.items() if minor >= floor]
    return tags


def run(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def build(args: argparse.Namespace, files: list[str], work: Path) -> None:
    pip = [args.pip_python, "-m", "pip", "--isolated", "--disable-pip-version-check"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    source = work / ".source"
    copy_sources(args.project, files, source)
    done = run([*pip, "wheel", "--no-deps", "-q", "-w", str(work), str(source)], env=env)
    shutil.rmtree(source)
    if done.returncode != 0:
        raise WheelhouseError(f"building the tgstack wheel failed:\n{done.stderr[-3000:]}")

    environment = target_environment(args.python_version, args.machine)
    wanted = locked_requirements(args.requirements.read_text(), environment)
    minor = environment["python_version"]
    target = [
        "--only-binary=:all:",
        "--python-version",
        minor,
        "--implementation",
        "cp",
        "--abi",
        "cp" + minor.replace(".", ""),
    ]
    for tag in platforms(args.machine, args.glibc):
        target += ["--platform", tag]
    # A locked dependency published only as an sdist has no wheel for any platform: it is
    # fetched (hash-checked) as an sdist and built here; pure Python only.
    sdists: list[str] = []
    while True:
        wheels = [line for line in wanted if line not in sdists]
        listed = work / ".wheels.txt"
        listed.write_text("".join(f"{line}\n" for line in wheels))
        done = run([*pip, "download", "-q", "--no-deps", "--require-hashes", "-d", str(work),
                    *target, "-r", str(listed)])  # fmt: skip
        listed.unlink()
        if done.returncode == 0:
            break
        report = done.stdout + done.stderr
        found = _MISSING.search(report)
        line = next((w for w in wheels if found and w.startswith(found.group(1) + "==")), None)
        if line is None:
            raise WheelhouseError(f"pip download of the locked runtime failed:\n{report[-3000:]}")
        sdists.append(line)
    if sdists:
        _build_sdists(pip, env, sdists, work)


def _build_sdists(pip: list[str], env: dict[str, str], sdists: list[str], work: Path) -> None:
    local = work / ".sdists"
    local.mkdir()
    listed = local / "sdists.txt"
    listed.write_text("".join(f"{line}\n" for line in sdists))
    done = run([*pip, "download", "-q", "--no-deps", "--require-hashes", "--no-binary=:all:",
                "-d", str(local), "-r", str(listed)])  # fmt: skip
    if done.returncode != 0:
        raise WheelhouseError(f"pip download of locked sdists failed:\n{done.stderr[-3000:]}")
    for sdist in sorted(p for p in local.iterdir() if p != listed):
        before = set(work.glob("*.whl"))
        built = run([*pip, "wheel", "--no-deps", "-q", "-w", str(work), str(sdist)], env=env)
        if built.returncode != 0:
            report = built.stderr[-2000:]
            raise WheelhouseError(f"building a wheel from {sdist.name} failed:\n{report}")
        fresh = set(work.glob("*.whl")) - before
        impure = [w.name for w in fresh if not w.name.endswith("-none-any.whl")]
        if impure:
            raise WheelhouseError(f"{', '.join(impure)}: built from an sdist, not pure Python")
    shutil.rmtree(local)


_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")


def finish(work: Path) -> list[str]:
    wheels = sorted(p.name for p in work.glob("*.whl"))
    pins = []
    for name in wheels:
        match = _WHEEL_NAME.match(name)
        if match is None:
            raise WheelhouseError(f"unexpected wheel file name {name}")
        if match["name"] == "tgstack":
            continue  # installed on its own, with --no-deps (same version, new build)
        digest = hashlib.sha256((work / name).read_bytes()).hexdigest()
        project = match["name"].replace("_", "-").lower()
        pins.append(f"{project}=={match['version']} --hash=sha256:{digest}")
    (work / "requirements.txt").write_text("".join(f"{pin}\n" for pin in sorted(pins)))
    sums = "".join(
        f"{hashlib.sha256((work / n).read_bytes()).hexdigest()}  {n}\n"
        for n in [*wheels, "requirements.txt"]
    )
    (work / "SHA256SUMS").write_text(sums)
    # One reproducible archive (sorted, fixed owner and time) for a single copy to the server.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in [*wheels, "requirements.txt", "SHA256SUMS"]:
            info = tar.gettarinfo(str(work / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 1700000000
            info.mode = 0o644
            with (work / name).open("rb") as handle:
                tar.addfile(info, handle)
    (work / "wheelhouse.tar").write_bytes(buffer.getvalue())
    return wheels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--project", type=Path)
    parser.add_argument("--cache", type=Path)
    parser.add_argument(
        "--print-pins", action="store_true",
        help="only print, as JSON, the locked name -> version the target gets (no build)",
    )  # fmt: skip
    parser.add_argument(
        "--requirements", type=Path, required=True,
        help="the lock's hashed runtime export (requirements/runtime.txt)",
    )  # fmt: skip
    parser.add_argument(
        "--python-version", required=True, help="target interpreter's full version, e.g. 3.13.5"
    )
    parser.add_argument("--machine", required=True, help="target architecture, e.g. x86_64")
    parser.add_argument("--glibc", help="target glibc version, e.g. 2.41 (for a build)")
    parser.add_argument("--pip-python", default=sys.executable, help="Python whose pip to use")
    args = parser.parse_args()
    if not re.fullmatch(r"3\.\d+\.\d+", args.python_version):
        parser.error(f"--python-version must look like 3.13.5, not {args.python_version!r}")
    if args.print_pins:
        environment = target_environment(args.python_version, args.machine)
        print(json.dumps(locked_pins(args.requirements.read_text(), environment), sort_keys=True))
        return 0
    missing = [name for name in ("project", "cache", "glibc") if getattr(args, name) is None]
    if missing:
        parser.error("a build needs " + ", ".join(f"--{name}" for name in missing))

    args.project = args.project.resolve()
    minor = "".join(args.python_version.split(".")[:2])
    tag = f"cp{minor}-manylinux_{args.glibc.replace('.', '_')}"
    tag += f"_{args.machine}"
    files = source_files(args.project)
    if "pyproject.toml" not in files:
        parser.error(f"{args.project} has no pyproject.toml")
    if not args.requirements.is_file():
        parser.error(f"no lock export at {args.requirements}")
    wanted = source_hash(args.project, files, f"{tag} {args.python_version}", args.requirements)
    args.cache.mkdir(parents=True, exist_ok=True)
    builds = args.cache / tag
    final = builds / wanted[:16]
    with (args.cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        changed = not (final / ".stamp").is_file()
        if changed:
            builds.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=builds))
            try:
                build(args, files, work)
                finish(work)
                (work / ".stamp").write_text(wanted + "\n")
                shutil.rmtree(final, ignore_errors=True)
                work.rename(final)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        os.utime(final)  # most recently used
        done = sorted(
            (d for d in builds.iterdir() if (d / ".stamp").is_file()),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        for stale in done[KEEP_BUILDS:]:
            shutil.rmtree(stale, ignore_errors=True)
    tar = final / "wheelhouse.tar"
    print(
        json.dumps(
            {
                "changed": changed,
                "dir": str(final),
                "tar": str(tar),
                "sha256": hashlib.sha256(tar.read_bytes()).hexdigest(),
                "wheels": sorted(p.name for p in final.glob("*.whl")),
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        sys.exit(1)
