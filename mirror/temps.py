"""One naming rule for every temporary file the mirror writes, and one way to clean up.

Store files, index generations, ``CURRENT``, ``mirror.json``, the lease's holder file and
exports are all written under a temporary name beside their final one and renamed (or
linked) into place, so a reader never sees half a file. A writer killed with ``kill -9``
leaves its temp behind; a full-size copy of the index (280 MB at 100,000 images) among
them. Temps outside the store are named ``.mirror-tmp-<uuid>.<pid>@<host>~<name>``
(:func:`owned_temp`): the owner is in the name, so the next writer on this host deletes
those whose process is dead (:func:`remove_dead_temps`), and ``mirror verify`` reports
them (:func:`leftovers`). Store temps (``.tmp-<token><n>.<pid>`` in the shard folders) follow
the store's own rule (``ObjectStore.clean_temp``). This module imports nothing of the
mirror, so that every writer (the config, the lease, the index) can use it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from pathlib import Path

TMP_PREFIX = ".mirror-tmp-"
LEGACY_PREFIX = ".tmp-"  # index, config and lease temps before owners were named

# .mirror-tmp-<uuid>.<pid>@<host>~<name>: a host name has no "~", so the name can be anything
_OWNED_TEMP = re.compile(rf"{re.escape(TMP_PREFIX)}[0-9a-f]{{32}}\.(\d+)@([^~]*)~(.*)",
                         re.DOTALL)


def owned_temp(path: Path) -> Path:
    """A temporary name beside ``path`` that names its owner (pid and host), so that a
    later run can tell a killed process's leftovers from those of one still running."""
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}.{os.getpid()}@{host()}~{path.name}")


def host() -> str:
    """This host's name as temps record it (bounded: a file name has 255 bytes)."""
    return socket.gethostname().replace("~", "")[:64]


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` of this host runs (or belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(path: Path, name: str | None = None, legacy: bool = False) -> bool:
    """Whether ``path`` is a temp a dead process of this host left (beside ``name``, when
    given). Unowned ``.mirror-tmp-`` temps are dead; ``legacy`` ``.tmp-`` ones too (only
    for folders that a lease holder alone writes: the index folder, the root, the locks)."""
    owned = _OWNED_TEMP.fullmatch(path.name)
    if owned is not None:
        return (name is None or owned[3] == name) and owned[2] == host() \
            and not pid_alive(int(owned[1]))
    if path.name.startswith(TMP_PREFIX):
        return name is None or path.name.endswith(f"-{name}")
    return legacy and path.name.startswith(LEGACY_PREFIX)


def remove_dead_temps(folder: Path, name: str | None = None, legacy: bool = False) -> int:
    """Delete the temps killed processes of this host left in ``folder``; returns how
    many. Temps of running processes and of other hosts (whose pids mean nothing here)
    are kept."""
    count = 0
    for path in leftovers(folder, name, legacy):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        count += 1
    return count


def leftovers(folder: Path, name: str | None = None, legacy: bool = False) -> list[Path]:
    """The dead temps in ``folder`` (see :func:`is_dead`), sorted."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith((TMP_PREFIX, LEGACY_PREFIX))
                  and is_dead(p, name, legacy))


def writer_folders(layout) -> list[tuple[Path, bool]]:
    """Folders only the lease holder writes, outside the store, where aborted writers'
    temps are left (index copies, CURRENT, mirror.json, the holder file), and whether
    unowned ``.tmp-`` files there are old writers' too (not in the root: it is the user's)."""
    return [(layout.root, False), (layout.index_dir, True), (layout.locks, True)]


def writer_leftovers(layout) -> list[Path]:
    """What aborted writers left outside the store."""
    return [p for folder, legacy in writer_folders(layout) for p in leftovers(folder, None,
                                                                           legacy)]


def clean_writer_temps(layout) -> int:
    """Delete what aborted writers left outside the store (the caller holds the lease)."""
    return sum(remove_dead_temps(folder, legacy=legacy)
               for folder, legacy in writer_folders(layout))
