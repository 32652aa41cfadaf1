"""The reliability suite at scale: many kill points, more images; prints a table.

    PYTHONPATH=. python bench/reliability.py [--images 60] [--kills 20] [--seed 1]

Columns: case, tried, passed, killed (kills that landed before the child finished) and
data lost (files or index rows verified before a kill that are gone or changed after;
must be 0). Everything runs against a loopback sandbox in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tabulate import tabulate  # noqa: E402

from mirror.sources.isic_v1.sandbox import serve  # noqa: E402
from tests.reliability.cases import (  # noqa: E402
    Tally,
    crash_gc,
    crash_snapshot_export,
    crash_sync,
    matches_clean_sync,
)
from tests.reliability.helpers import run_mirror  # noqa: E402
from tests.reliability.test_disk_full import disk_full_then_resume  # noqa: E402
from tests.reliability.test_faults import faulty_sync  # noqa: E402


def one_shot(case: str, problems: list[str]) -> Tally:
    """A case that runs once and reports a list of problems."""
    tally = Tally(case)
    tally.record(problems, [], False)
    return tally


def run(work: Path, images: int, kills: int, seed: int) -> list[tuple[Tally, float]]:
    """Every case; returns (tally, seconds) rows."""
    rows = []

    def timed(make):
        started = time.monotonic()
        tally = make()
        rows.append((tally, time.monotonic() - started))
        print(f"  {tally.case}: {tally.passed}/{tally.tried}", file=sys.stderr, flush=True)
        for failure in tally.failures[:5]:
            print(f"    {failure}", file=sys.stderr)

    with serve(images=images, seed=seed, private_fraction=0.0) as sb:
        root = work / "crash"
        timed(lambda: crash_sync(root, sb, seed, kills, max_seconds=6.0,
                                 max_bytes=images * 150_000))
        timed(lambda: one_shot("crashed mirror == clean sync",
                               matches_clean_sync(root, work / "clean", sb.url)))
    with serve(images=max(10, images // 3), seed=seed + 1, private_fraction=0.0) as sb:
        root = work / "pinned"
        for args in (("sync", "--root", str(root), "--url", sb.url, "--quiet"),
                     ("snapshot", "create", "--root", str(root), "pin")):
            assert run_mirror(*args).returncode == 0
        for fmt in ("dir", "tar", "bagit"):
            out = work / f"export-{fmt}"
            out.mkdir()
            timed(lambda f=fmt, o=out: crash_snapshot_export(root, "pin", o, seed, kills // 2,
                                                             fmt=f))
        sb.mutate(update=max(2, images // 10), remove=2)
        assert run_mirror("sync", "--root", str(root), "--quiet").returncode == 0
        timed(lambda: crash_gc(root, "pin", seed, max(2, kills // 4)))
    timed(lambda: one_shot(f"faults 500/reset/truncate/429, {images * 2} images",
                           faulty_sync(work / "faults", images * 2, seed)))
    for allowed in (3, 10 * images // 3, 30 * images // 10):
        with serve(images=images, seed=seed + 2, private_fraction=0.0) as sb:
            timed(lambda a=allowed, s=sb: one_shot(
                f"ENOSPC after {a} files, then resume",
                disk_full_then_resume(work / f"enospc-{a}", s.url, a)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIRROR_STATE_DIR"] = str(Path(tmp) / "state")
        rows = run(Path(tmp), args.images, args.kills, args.seed)
    print(tabulate([(t.case, t.tried, t.passed, t.killed, t.data_lost, f"{s:.0f}")
                    for t, s in rows],
                   headers=["case", "tried", "passed", "killed", "data lost", "seconds"],
                   tablefmt="github"))
    sys.exit(0 if all(t.passed == t.tried and t.data_lost == 0 for t, _ in rows) else 1)


if __name__ == "__main__":
    main()
