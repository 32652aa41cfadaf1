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
