#!/usr/bin/env python3
"""Build, on the controller, the wheelhouse a server installs tgstack from without an index.

    wheelhouse.py --project DIR --cache DIR --python-version 3.13 --machine x86_64 --glibc 2.41

Writes ``<cache>/<tag>/<hash>/`` (tag: ``cp313-manylinux_2_41_x86_64``; hash: of the inputs
below) holding the tgstack wheel
built from DIR, every dependency as a wheel for that interpreter and platform (pure-Python
sdists such as pyaes are built into py3-none-any wheels here), ``requirements.txt`` pinning
each of them, ``SHA256SUMS`` and ``wheelhouse.tar`` (the same files, for one copy to the
server). The inputs (project sources, pyproject.toml, target, this script) are hashed: when a
build of that hash exists nothing is done, so a rerun is instant and changes nothing. The
newest few builds per tag are kept (a sandbox and a Molecule scenario may deploy different
versions of the tree without rebuilding each other's).
Prints one JSON object: {"changed": bool, "dir": ..., "tar": ..., "sha256": ..., "wheels": [...]}.
The cache is locked while building: parallel runs (several Molecule scenarios) share it.
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

FORMAT = 2  # bump when the layout of a built wheelhouse changes
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


def source_hash(project: Path, files: list[str], target: str) -> str:
    digest = hashlib.sha256(f"format={FORMAT} target={target}\n".encode())
    digest.update(Path(__file__).read_bytes())
    for name in files:
        path = project / name
        content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(f"{name}\0{path.is_symlink()}\0".encode())
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


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
    pip = [args.pip_python, "-m", "pip", "--disable-pip-version-check"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    source = work / ".source"
    copy_sources(args.project, files, source)
    done = run([*pip, "wheel", "--no-deps", "-q", "-w", str(work), str(source)], env=env)
    shutil.rmtree(source)
    if done.returncode != 0:
        raise WheelhouseError(f"building the tgstack wheel failed:\n{done.stderr[-3000:]}")
    project_wheel = next(work.glob("tgstack-*.whl"))
    local = work / ".sdist-wheels"
    local.mkdir()
    target = [
        "--only-binary=:all:",
        "--python-version",
        args.python_version,
        "--implementation",
        "cp",
        "--abi",
        "cp" + args.python_version.replace(".", ""),
    ]
    for tag in platforms(args.machine, args.glibc):
        target += ["--platform", tag]
    # A dependency published only as an sdist has no wheel for any platform: build it here
    # (pure Python, so the wheel is py3-none-any) and try again.
    for _ in range(10):
        done = run(
            [*pip, "download", "-d", str(work), "--find-links", str(local), *target,
             str(project_wheel)]
        )  # fmt: skip
        if done.returncode == 0:
            break
        report = done.stdout + done.stderr
        found = _MISSING.search(report)
        missing = (found.group(1), found.group(2)) if found else _sdist_only(report)
        if missing is None:
            raise WheelhouseError(f"pip download failed:\n{report[-3000:]}")
        name, spec = missing
        built = run([*pip, "wheel", "--no-deps", "-q", "-w", str(local), f"{name}{spec}"], env=env)
        fresh = [w for w in local.glob("*.whl") if not w.name.endswith("-py3-none-any.whl")]
        if built.returncode != 0 or fresh:
            raise WheelhouseError(
                f"{name} has no wheel for Python {args.python_version} on {args.machine} "
                f"and is not pure Python:\n{built.stderr[-2000:]}"
            )
    else:
        raise WheelhouseError("pip download kept failing; giving up")
    for wheel in local.glob("*.whl"):
        if not (work / wheel.name).exists():
            shutil.copy2(wheel, work / wheel.name)
    shutil.rmtree(local)


def _sdist_only(stderr: str) -> tuple[str, str] | None:
    """The first package the resolver could not find a wheel for (conflict report form)."""
    match = re.search(r"depends on ([A-Za-z0-9_.\-]+)([^\s;]*)", stderr)
    if match and "conflict is caused by" in stderr:
        return match.group(1), match.group(2)
    return None


_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")


def finish(work: Path) -> list[str]:
    wheels = sorted(p.name for p in work.glob("*.whl"))
    pins = []
    for name in wheels:
        match = _WHEEL_NAME.match(name)
        if match is None:
            raise WheelhouseError(f"unexpected wheel file name {name}")
        pins.append(f"{match['name'].replace('_', '-').lower()}=={match['version']}")
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
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--python-version", required=True, help="target interpreter, e.g. 3.13")
    parser.add_argument("--machine", required=True, help="target architecture, e.g. x86_64")
    parser.add_argument("--glibc", required=True, help="target glibc version, e.g. 2.41")
    parser.add_argument("--pip-python", default=sys.executable, help="Python whose pip to use")
    args = parser.parse_args()
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version must look like 3.13, not {args.python_version!r}")

    args.project = args.project.resolve()
    tag = f"cp{args.python_version.replace('.', '')}-manylinux_{args.glibc.replace('.', '_')}"
    tag += f"_{args.machine}"
    files = source_files(args.project)
    if "pyproject.toml" not in files:
        parser.error(f"{args.project} has no pyproject.toml")
    wanted = source_hash(args.project, files, tag)
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
