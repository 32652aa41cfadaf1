"""Reliability cases shared by the test suites and ``bench/reliability.py``.

Each case returns :class:`Tally` rows: how many attempts were made, how many ended with
every invariant holding, and how much data was lost (files or index rows verified before
a kill that are gone or changed after; must be 0).
"""

from __future__ import annotations

import hashlib
import signal
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirror.sources.isic_v1.sandbox import Sandbox
from mirror.verify import verify_mirror
from tests.reliability.helpers import (
    child_env,
    consistency_problems,
    indexed,
    kill_at,
    kill_points,
    kill_when,
    lost,
    mirror_cmd,
    published_files,
    run_mirror,
    sha256_tree,
    start_sync,
)


@dataclass
class Tally:
    """One case's outcome over its attempts."""

    case: str
    tried: int = 0
    passed: int = 0
    killed: int = 0  # attempts where the kill landed before the child finished
    data_lost: int = 0
    failures: list[str] = field(default_factory=list)

    def record(self, problems: list[str], lost_items: list[str], killed: bool) -> None:
        self.tried += 1
        self.killed += killed
        self.data_lost += len(lost_items)
        if problems or lost_items:
            self.failures += problems + [f"lost {p}" for p in lost_items]
        else:
            self.passed += 1


def crash_sync(root: Path, sb: Sandbox, seed: int, kills: int, workers: int = 4,
               max_seconds: float = 3.0, max_bytes: int = 1_500_000) -> Tally:
    """Kill ``mirror sync`` at ``kills`` seeded moments, each time resuming to completion.

    The first kill lands in the first sync of an empty root; before each later one the
    archive gains and changes images, so every run has documents and files to move.
    """
    tally = Tally(f"kill -9 sync ({kills} points)")
    for n, point in enumerate(kill_points(seed, kills, max_seconds, max_bytes)):
        if n:
            sb.mutate(add=3, update=2)
        before = indexed(root) if (root / "mirror.json").exists() else {}
        child = start_sync(root, sb.url, "--workers", str(workers))
        killed = kill_at(child, root, point)
        visible = published_files(root) if (root / "mirror.json").exists() else {}
        # the user re-runs the same command (the first run may have died before it
        # created the mirror, so --url is still needed)
        resumed = run_mirror("sync", "--root", str(root), "--url", sb.url, "--quiet",
                             "--workers", str(workers))
        problems = [f"{point}: resume exit {resumed.returncode}: {resumed.stderr[-300:]}"
                    ] if resumed.returncode else []
        if problems:  # no finished mirror to check
            tally.record(problems, [], killed)
            continue
        checked = run_mirror("verify", "--root", str(root))
        if checked.returncode:
            problems.append(f"{point}: verify exit {checked.returncode}: {checked.stdout[-500:]}")
        problems += [f"{point}: {p}" for p in consistency_problems(root)]
        after = indexed(root)
        # Rows published before the kill, and files visible right after it, must survive
        # byte for byte (a visible file is whole: it is adopted, never replaced).
        tally.record(problems, lost(before, after) + lost(visible, after), killed)
    return tally


def matches_clean_sync(root: Path, clean_root: Path, url: str) -> list[str]:
    """Blob rows of ``root`` that differ from a fresh, uninterrupted sync of the archive."""
    done = run_mirror("sync", "--root", str(clean_root), "--url", url, "--quiet")
    assert done.returncode == 0, done.stderr
    ours, clean = indexed(root), indexed(clean_root)
    return [p for p in sorted(clean) if ours.get(p) != clean[p]]


def crash_snapshot_export(root: Path, name: str, out: Path, seed: int, kills: int,
                          fmt: str = "dir") -> Tally:
    """Kill ``mirror snapshot export`` at seeded moments: DEST is absent or complete."""
    import random

    tally = Tally(f"kill -9 snapshot export --format {fmt} ({kills} points)")
    suffix = ".tar" if fmt == "tar" else ""
    reference = out / f"reference{suffix}"
    done = run_mirror("snapshot", "export", "--root", str(root), name, str(reference),
                      "--format", fmt)
    assert done.returncode == 0, done.stderr
    expected = _tree_or_file(reference)
    rng = random.Random(seed)
    for n in range(kills):
        dest = out / f"dest-{n}{suffix}"
        child = _popen("snapshot", "export", "--root", str(root), name, str(dest),
                       "--format", fmt)
        delay = rng.uniform(0.2, 1.5)  # the child spends about 0.5 s importing
        start = time.monotonic()
        killed = kill_when(child, lambda d=delay, s=start: time.monotonic() - s >= d)
        problems = []
        if dest.exists() and _tree_or_file(dest) != expected:
            problems.append(f"export killed after {delay:.2f}s left a partial {dest.name}")
        if not dest.exists():
            again = run_mirror("snapshot", "export", "--root", str(root), name, str(dest),
                               "--format", fmt)
            if again.returncode or _tree_or_file(dest) != expected:
                problems.append(f"export after the kill failed: {again.stderr[-300:]}")
        tally.record(problems, [], killed)
    return tally


def _tree_or_file(path: Path) -> dict[str, str]:
    """What an export wrote: every file of a folder, or the one file (tar), hashed."""
    if path.is_dir():
        return sha256_tree(path)
    return {"": hashlib.sha256(path.read_bytes()).hexdigest()}


def _popen(*args: str):
    import subprocess

    return subprocess.Popen(mirror_cmd(*args), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


# A ``mirror gc`` that kills itself (SIGKILL, like kill -9) right after removing its
# ``remove_at``-th file: the moment a real kill is least likely to hit by chance.
GC_KILLED_AT = textwrap.dedent("""
    import os, signal, sys
    from mirror.store import ObjectStore
    from mirror.cli import main
    remove_at, real_remove, count = int(sys.argv[1]), ObjectStore.remove, [0]
    def remove(self, relpath):
        real_remove(self, relpath)
        count[0] += 1
        if count[0] == remove_at:
            os.kill(os.getpid(), signal.SIGKILL)
    ObjectStore.remove = remove
    main(["gc", "--root", sys.argv[2]])
""")


def crash_gc(root: Path, snapshot: str, seed: int, kills: int) -> Tally:
    """Kill ``mirror gc`` (at seeded times and right after a file removal).

    Afterwards the pinned snapshot still verifies, and once gc has run again ``mirror
    verify`` is clean and the store and the index agree.
    """
    import random
    import subprocess

    tally = Tally(f"kill -9 gc ({kills} points)")
    rng = random.Random(seed)
    pinned = run_mirror("snapshot", "verify", "--root", str(root), snapshot)
    assert pinned.returncode == 0, pinned.stdout
    for n in range(kills):
        before = indexed(root)
        if n % 2 == 0:
            child = subprocess.run(mirror_cmd()[:1] + ["-c", GC_KILLED_AT, str(1 + n),
                                                       str(root)],
                                   env=child_env(), capture_output=True, timeout=120)
            killed = child.returncode == -signal.SIGKILL
        else:
            gc = _popen("gc", "--root", str(root))
            delay, start = rng.uniform(0.3, 1.2), time.monotonic()
            killed = kill_when(gc, lambda d=delay, s=start: time.monotonic() - s >= d)
        problems = _gc_problems(root, snapshot, "right after the kill", orphans_ok=True)
        done = run_mirror("gc", "--root", str(root))
        if done.returncode:
            problems.append(f"gc after the kill: exit {done.returncode}: {done.stderr[-300:]}")
        problems += _gc_problems(root, snapshot, "after gc ran again")
        problems += [f"after gc ran again: {p}" for p in consistency_problems(root)]
        after = indexed(root)
        # gc drops superseded rows by design (the pinned snapshot's verification checks
        # that nothing it needs went); no surviving row may change.
        tally.record(problems, lost({p: s for p, s in before.items() if p in after}, after),
                     killed)
    return tally


def _gc_problems(root: Path, snapshot: str, when: str, orphans_ok: bool = False
                 ) -> list[str]:
    """The pinned snapshot verifies and so does the mirror (``orphans_ok``: files nothing
    names may remain, as a gc killed between its publish and its deletions leaves them)."""
    problems = []
    pinned = run_mirror("snapshot", "verify", "--root", str(root), snapshot)
    if pinned.returncode:
        problems.append(f"{when}: snapshot {snapshot} does not verify: {pinned.stdout[-400:]}")
    report = verify_mirror(root)
    bad = [p for p in report.problems if p.problem != "temp"
           and not (orphans_ok and p.problem == "orphaned")]
    problems += [f"{when}: verify: {p.problem} {p.path}" for p in bad]
    if not orphans_ok:
        checked = run_mirror("verify", "--root", str(root))
        if checked.returncode:
            problems.append(f"{when}: verify exit {checked.returncode}: "
                            f"{checked.stdout[-400:]}")
    return problems
