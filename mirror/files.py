"""Writing files outside the store (exports): atomic replacement and linking.

Readers of an export folder (a training script, a second export) must never see a
half-written file, so every file is written under a temporary name in the same folder and
renamed into place; a killed export leaves only ``.mirror-tmp-*`` files behind, which the
next export of the same folder removes (when their process is dead: see
:func:`remove_dead_temps`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mirror.errors import ExportDestError, MirrorError
from mirror.temps import TMP_PREFIX, owned_temp, remove_dead_temps  # noqa: F401

LINK_MODES = ("hard", "sym", "copy")
temp_beside = owned_temp  # one naming rule for every temp (mirror/temps.py)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Create ``path`` with what ``write(file)`` writes, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
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
    tmp = temp_beside(dest)
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


@contextmanager
def staged_folder(dest: Path, replace: bool = False) -> Iterator[Path]:
    """A new folder beside ``dest`` to fill; on success it becomes ``dest``.

    A non-empty ``dest`` is refused (an export mixed into an older one leaves the old files
    beside a new ``metadata.csv``) unless ``replace``: then the two folders are exchanged
    in one atomic step where the kernel offers it (``renameat2``), and the old one is
    deleted. Readers see the old export or the new one, never a mixture; a killed export
    leaves only its staging folder, which the next export beside it removes.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ExportDestError(f"{dest} is a file, not a folder; choose a new or empty folder")
    if dest.is_dir() and any(dest.iterdir()) and not replace:
        raise ExportDestError(f"{dest} is not empty; choose a new or empty folder, or pass "
                              "--replace to swap it for this export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest.parent, dest.name)
    staging = temp_beside(dest)
    staging.mkdir()
    try:
        yield staging
        if dest.is_dir() and any(dest.iterdir()):
            _exchange(staging, dest)  # staging now holds the old export
            shutil.rmtree(staging)
        else:
            os.replace(staging, dest)  # onto nothing, or onto an empty folder
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere, two
    renames (a reader may then briefly find ``b`` missing, never mixed)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    aside = temp_beside(b)
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)
