"""Durable file writes: a file replaced whole survives a crash or a power cut as either the old
or the new content, never a torn mix (temporary file, fsync, rename, fsync the directory).

Used for the small state files the gateway keeps beside its session: the spool positions, the
spill's offset and the backfill marks. Files are created 0600.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, body: bytes) -> None:
    """Replace ``path`` with ``body`` durably; its directory must exist."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
