"""Where things live under a mirror root. The one place that knows the on-disk layout.

::

    <root>/
      mirror.json                  marker + config (format, source, base URL, auth mode, index URL)
      <ns>/                        one namespace per archive ("isic")
        store/0..f/                objects, sharded by the last hex digit of the object id
        index/CURRENT              names the current published index generation
        index/index-NNNNNN.sqlite  immutable, read-only index generations
        ledger/                    append-only record of what each generation published
        snapshots/                 snapshot manifests
        locks/                     writer lease
        tmp/                       scratch

The writer's live SQLite database never lives under the root (it may be on a NAS,
where WAL does not work): it lives in :func:`state_dir`, on local disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
SHARED_DIR_MODE = 0o2775  # group-writable, setgid: a lab group shares the mirror
MARKER = "mirror.json"
SHARDS = "0123456789abcdef"


@dataclass(frozen=True)
class Layout:
    """Paths of one namespace of one mirror root."""

    root: Path
    namespace: str = "isic"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def base(self) -> Path:
        return self.root / self.namespace

    @property
    def store(self) -> Path:
        return self.base / "store"

    @property
    def index_dir(self) -> Path:
        return self.base / "index"

    @property
    def current(self) -> Path:
        return self.index_dir / "CURRENT"

    @property
    def ledger(self) -> Path:
        return self.base / "ledger"

    @property
    def snapshots(self) -> Path:
        return self.base / "snapshots"

    @property
    def locks(self) -> Path:
        return self.base / "locks"

    @property
    def tmp(self) -> Path:
        return self.base / "tmp"

    def generation_path(self, number: int) -> Path:
        return self.index_dir / f"index-{number:06d}.sqlite"

    def state_dir(self) -> Path:
        """Local-disk folder for the writer's live database and sync plan."""
        override = os.environ.get("MIRROR_STATE_DIR")
        if override:
            base = Path(override)
        else:
            xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            base = Path(xdg) / "mirror"
        key = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return base / f"{self.namespace}-{key}"


def shared_mkdir(path: Path, root: Path) -> None:
    """Create ``path`` (inside the mirror ``root``) and the folders above it up to ``root``,
    each group-writable and setgid (:data:`SHARED_DIR_MODE`), whatever the umask.

    Every member of the group that owns the root can then take the lease, publish an index
    generation and collect garbage, since setgid hands the root's group down to every
    folder and file made under it. Folders above the root are made as usual; a folder
    that exists keeps its mode (it may be an administrator's choice, or not ours).
    """
    path, root = Path(path), Path(root)
    if path.is_dir():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    folder = root
    for part in (root, *path.relative_to(root).parts):
        folder = root if part is root else folder / part
        if folder.is_dir():
            continue
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it: its mode is its own
        try:
            os.chmod(folder, SHARED_DIR_MODE)
        except OSError:
            pass  # a file system that keeps no modes (SMB without unix extensions)
