"""Writing files outside the store (exports): atomic replacement and linking.

Readers of an export folder (a training script, a second export) must never see a
half-written file, so every file is written under a temporary name in the same folder and
renamed into place; a killed export leaves only ``.mirror-tmp-*`` files behind, which the
next export of the same folder removes.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from mirror.errors import MirrorError

TMP_PREFIX = ".mirror-tmp-"
LINK_MODES = ("hard", "sym", "copy")


def _temp_beside(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Create ``path`` with what ``write(file)`` writes, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """:func:`write_atomic` for bytes or an iterable of byte chunks."""
    chunks = [data] if isinstance(data, bytes) else data
    write_atomic(path, lambda handle: [handle.write(chunk) for chunk in chunks])


def place(source: Path, dest: Path, link: str) -> str:
    """Put ``source`` at ``dest`` as a hard link, symlink or copy; returns what was done.

    A hard link across file systems is impossible, so it falls back to a copy (and says so
    by returning ``"copy"``). An existing ``dest`` is replaced atomically.
    """
    if link not in LINK_MODES:
        raise MirrorError(f"unknown link mode {link!r}; use one of {', '.join(LINK_MODES)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link == "hard" and dest.exists() and os.path.samefile(source, dest):
        return "hard"
    tmp = _temp_beside(dest)
    try:
        done = _place_temp(source, tmp, link)
        os.replace(tmp, dest)
        return done
    finally:
        tmp.unlink(missing_ok=True)


def _place_temp(source: Path, tmp: Path, link: str) -> str:
    if link == "sym":
        os.symlink(source.resolve(), tmp)
        return "sym"
    if link == "hard":
        try:
            os.link(source, tmp)
            return "hard"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)
    return "copy"


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files a killed export left in ``folder`` (not recursive)."""
    count = 0
    if folder.is_dir():
        for path in folder.glob(f"{TMP_PREFIX}*"):
            path.unlink(missing_ok=True)
            count += 1
    return count
