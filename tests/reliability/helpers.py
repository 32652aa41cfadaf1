"""Shared tools of the reliability suites (and of ``bench/reliability.py``).

They run the real CLI in child processes (so ``kill -9`` is a real kill), read the
published index the way any reader does, and state the invariants every case checks:
``mirror verify`` is clean, the index names exactly the files in the store, and no row
is duplicated.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from mirror.config import layout_for, load_config
from mirror.index import Blob, DocumentVersion
from mirror.index.database import open_reader
from mirror.layout import SHARDS
from mirror.sources.isic_v1.models import Image
from mirror.store import TEMP_PREFIX, ObjectStore
from mirror.verify import verify_mirror

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m mirror`` child: this checkout first on the path."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def mirror_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mirror", *args]


def start_sync(root: Path, url: str | None = None, *extra: str,
               env: dict | None = None) -> subprocess.Popen:
    """A ``mirror sync`` child process (quiet, output captured)."""
    args = ["sync", "--root", str(root), "--quiet", *extra]
    if url:
        args += ["--url", url]
    return subprocess.Popen(mirror_cmd(*args), env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_mirror(*args: str, env: dict | None = None, timeout: float = 300
               ) -> subprocess.CompletedProcess:
    return subprocess.run(mirror_cmd(*args), env=env or child_env(), capture_output=True,
                          text=True, timeout=timeout)


def store_bytes(root: Path) -> int:
    """Bytes of every file (temp files too) under the store: how far a writer got."""
    total = 0
    for shard in SHARDS:
        try:
            with os.scandir(root / "isic" / "store" / shard) as entries:
                for entry in entries:
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:
                        pass  # a temp file unlinked while we looked
        except FileNotFoundError:
            pass
    return total


def kill_when(child: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120
              ) -> bool:
    """SIGKILL ``child`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        if ready():
            child.send_signal(signal.SIGKILL)
            child.wait()
            return True
        time.sleep(0.005)
    child.kill()
    child.wait()
    raise AssertionError("the child neither finished nor reached the kill point")


@dataclass(frozen=True)
class KillPoint:
    """When to kill: ``after`` seconds, or once the store grew by ``bytes`` bytes."""

    after: float | None = None
    bytes: int | None = None

    def __str__(self) -> str:
        return f"t={self.after:.2f}s" if self.after is not None else f"+{self.bytes}B"


def kill_points(seed: int, count: int, max_seconds: float, max_bytes: int) -> list[KillPoint]:
    """``count`` seeded kill moments, alternating by time and by bytes written."""
    rng = random.Random(seed)
    return [KillPoint(after=rng.uniform(0.05, max_seconds)) if n % 2 == 0
            else KillPoint(bytes=rng.randrange(1, max(2, max_bytes))) for n in range(count)]


def kill_at(child: subprocess.Popen, root: Path, point: KillPoint) -> bool:
    """Kill ``child`` at ``point``; False when it finished before getting there."""
    start_time, start_bytes = time.monotonic(), store_bytes(root)
    if point.after is not None:
        return kill_when(child, lambda: time.monotonic() - start_time >= point.after)
    return kill_when(child, lambda: store_bytes(root) - start_bytes >= point.bytes)


def published_files(root: Path) -> dict[str, str]:
    """``{path: sha256}`` of every published (non-temp) file, hashed as the index hashes."""
    layout = layout_for(root, load_config(root))
    store = ObjectStore(layout)
    return {relpath: store.hash(relpath)[0] for relpath in store.iter_files()}


def indexed(root: Path) -> dict[str, str]:
    """``{path: sha256}`` of every row (blobs and document versions) of the published index."""
    layout = layout_for(root, load_config(root))
    if not layout.current.exists():
        return {}
    engine = open_reader(layout)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Blob.path, Blob.sha256)).all()
            rows += conn.execute(select(DocumentVersion.path, DocumentVersion.sha256)).all()
    finally:
        engine.dispose()
    return dict(rows)


def duplicate_rows(root: Path) -> list[str]:
    """Tables where a path (or an image id) appears in more than one row."""
    layout = layout_for(root, load_config(root))
    engine = open_reader(layout)
    found = []
    try:
        with engine.connect() as conn:
            for name, column in (("blobs", Blob.path), ("document_versions",
                                                        DocumentVersion.path),
                                 ("images", Image.id), ("images.name", Image.name)):
                total, distinct = conn.execute(
                    select(func.count(column), func.count(column.distinct()))).one()
                if total != distinct:
                    found.append(f"{name}: {total} rows, {distinct} distinct")
    finally:
        engine.dispose()
    return found


def temp_files(root: Path) -> list[str]:
    return [f"{shard}/{name}" for shard in SHARDS
            if (root / "isic" / "store" / shard).is_dir()
            for name in os.listdir(root / "isic" / "store" / shard)
            if name.startswith(TEMP_PREFIX)]


def consistency_problems(root: Path) -> list[str]:
    """Every broken invariant of a finished mirror (empty: all hold)."""
    problems = [f"verify: {p.problem} {p.path} {p.detail}" for p in verify_mirror(root).problems
                if p.problem != "temp"]
    rows, files = indexed(root), published_files(root)
    problems += [f"file not in the index: {p}" for p in sorted(set(files) - set(rows))]
    problems += [f"row without a file: {p}" for p in sorted(set(rows) - set(files))]
    problems += [f"row and file differ: {p}" for p in sorted(set(rows) & set(files))
                 if rows[p] != files[p]]
    return problems + duplicate_rows(root)


def lost(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Entries of ``before`` (path -> sha256) gone or changed in ``after``: data lost."""
    return sorted(p for p, sha in before.items() if after.get(p) != sha)


def sha256_tree(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
