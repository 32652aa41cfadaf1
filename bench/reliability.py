"""The reliability suite at scale: many kill points, more images; prints a table.

    PYTHONPATH=. python bench/reliability.py [--images 60] [--kills 20] [--seed 1]

Columns: case, tried, passed, killed (kills that landed before the child finished),
data lost (files or index rows verified before a kill that are gone or changed after;
must be 0), and for the bomb and slow-server cases the worst peak RSS of the sync child
and its worst time to the error. A baseline row measures a clean sync of the same
sandbox in the same run: what "bounded" is compared with. Everything runs against
loopback servers in a temporary folder.

``--hostile-only`` runs the issue-16 cases alone (a few minutes).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@dataclass
class Bounded:
    """Worst memory and time to an error over a case's tries (0 when not measured)."""

    peak_mib: float = 0.0
    seconds: float = 0.0

    def add(self, peak: float, seconds: float) -> None:
        self.peak_mib, self.seconds = max(self.peak_mib, peak), max(self.seconds, seconds)


BOUNDS: dict[str, Bounded] = {}


def test_case(case: str, function, env: dict[str, str | None] | None = None, **fixtures) -> Tally:
    """A test of ``tests/reliability`` run once as a case (its assertions are the check);
    ``env`` stands in for the test module's autouse environment fixture."""
    tally = Tally(case)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        for key, value in (env or {}).items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        offered = {"tmp_path": Path(tmp), "monkeypatch": patch, **fixtures}
        wanted = inspect.signature(function).parameters
        try:
            function(**{k: v for k, v in offered.items() if k in wanted})
            tally.record([], [], False)
        except Exception as exc:  # noqa: BLE001 - a failed case is a row, not a crash
            tally.record([f"{type(exc).__name__}: {str(exc)[:300]}"], [], False)
    return tally


def bomb_case(tries: int) -> Tally:
    """Superpixel (13000x13000) and mask (20000x20000) bombs, each try a new mirror."""
    from tests.reliability import test_decode_bounds as bombs

    tally, bounded = Tally("decoding bombs: 1 MB PNGs of 169-400 Mpx"), Bounded()
    real = bombs.sync_child

    def measured(*args, **kwargs):
        code, out, seconds, peak = real(*args, **kwargs)
        if code:  # the run that met the bombs
            bounded.add(peak, seconds)
        return code, out, seconds, peak

    bombs.sync_child = measured
    try:
        for _ in range(tries):
            one = test_case(tally.case,
                            bombs.test_superpixel_and_mask_bombs_fail_alone_in_bounded_memory)
            tally.tried, tally.passed = tally.tried + 1, tally.passed + one.passed
            tally.failures += one.failures
    finally:
        bombs.sync_child = real
    BOUNDS[tally.case] = bounded
    return tally


def slow_case(tries: int) -> Tally:
    """A server sending one byte a second (headers, then body), default-free deadline 2 s."""
    from tests.reliability.misbehaving import headers, misbehaving_server, trickle
    from tests.reliability.test_bounded_http import sync_against

    tally, bounded = Tally("1 byte/s server, MIRROR_REQUEST_DEADLINE=2"), Bounded()
    replies = [trickle(headers(Content_Type="application/json", Content_Length=2) + b"[]", 1),
               trickle(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 40 + b"\r\n", 1)]
    for n in range(tries):
        with tempfile.TemporaryDirectory() as tmp, \
                misbehaving_server(replies[n % 2]) as url:
            code, stderr, seconds, peak = sync_against(url, Path(tmp) / "m", Path(tmp),
                                                       MIRROR_REQUEST_DEADLINE="2")
        bounded.add(peak, seconds)
        ok = code == 2 and "MIRROR_REQUEST_DEADLINE" in stderr and seconds < 15
        tally.record([] if ok else [f"exit {code}, {seconds:.1f} s: {stderr[-200:]}"], [],
                     False)
    BOUNDS[tally.case] = bounded
    return tally


def baseline_case(images: int) -> Tally:
    """A clean sync of a well-formed sandbox: the memory and time the bounds compare with."""
    from tests.reliability.test_decode_bounds import sync_child

    tally, bounded = Tally(f"baseline: clean sync, {images} images, superpixels+masks"), \
        Bounded()
    with tempfile.TemporaryDirectory() as tmp, serve(images=images, seed=5,
                                                     private_fraction=0.0) as sb:
        code, out, seconds, peak = sync_child(Path(tmp) / "m", Path(tmp), "--url", sb.url,
                                              "--blobs", "superpixels,masks")
    bounded.add(peak, seconds)
    tally.record([] if code == 0 else [out[-300:]], [], False)
    BOUNDS[tally.case] = bounded
    return tally


def hostile_cases() -> list:
    """The issue-16 cases: each a test function of tests/reliability, run once."""
    from tests.reliability import (
        test_damaged_state,
        test_duplicate_names,
        test_gc_grace,
        test_leftovers,
        test_login_lost,
        test_malformed,
        test_planted,
        test_removal_guard,
    )

    return [
        ("shrunken listing (15 -> 3) marks nothing removed",
         test_removal_guard.test_a_listing_that_shrinks_to_3_of_15_marks_nothing_removed),
        ("gc keeps removed objects' files (grace, pins)",
         test_gc_grace.test_removed_objects_files_wait_for_the_grace_and_for_every_pin),
        ("lost login (ISIC v1 user/me null)",
         test_login_lost.test_isic_v1_user_me_null_stops_the_removal),
        ("lost login (ISIC v2 users/me/ refused)",
         test_login_lost.test_isic_v2_users_me_refused_stops_the_removal),
        ("malformed ISIC v1 documents, new mirror",
         test_malformed.test_malformed_documents_fail_alone_and_a_new_mirror_publishes),
        ("malformed ISIC v1 documents, batch detail path",
         test_malformed.test_the_batch_detail_path_fails_the_same_documents),
        ("malformed TCIA getSeries rows",
         test_malformed.test_tcia_malformed_series_rows_fail_alone),
        ("duplicate names in every export",
         test_duplicate_names.test_every_export_keeps_both_files_of_a_shared_name),
        ("planted file at a final store path",
         test_planted.test_a_planted_thumbnail_is_replaced_by_the_archives_bytes),
        ("index copy left by kill -9 in publish",
         lambda tmp_path: test_leftovers.
         test_an_index_copy_left_by_a_kill_during_publish_is_removed(tmp_path, "next sync")),
        ("full disk at the lease is not 'read-only'",
         lambda tmp_path, monkeypatch: _with_mirror(
             tmp_path, test_damaged_state.test_a_full_disk_at_the_lease_is_not_called_read_only,
             monkeypatch=monkeypatch)),
        ("truncated generation + lost state: reindex",
         lambda tmp_path: _with_mirror(
             tmp_path, test_damaged_state.test_a_damaged_index_names_reindex_which_rebuilds_it,
             damage="truncated generation, lost state folder")),
        ("garbage mirror.json",
         lambda tmp_path: _with_mirror(
             tmp_path, test_damaged_state.test_a_garbage_mirror_json_is_one_line_everywhere,
             garbage=b"[1, 2]")),
    ]


def _with_mirror(tmp_path: Path, function, **kwargs) -> None:
    """Run a test_damaged_state test on a freshly synced mirror (its fixtures, by hand)."""
    from tests.reliability.test_damaged_state import SYNC, _cli

    with serve(images=4, seed=103, private_fraction=0.0) as sb:
        root = tmp_path / "m"
        code, out = _cli("sync", "--root", str(root), "--url", sb.url, *SYNC)
        assert code == 0, out
        function(mirror_root=root, **kwargs)


def run_hostile(rows: list, timed) -> None:
    from tests.reliability import test_decode_bounds

    no_guard = {"MIRROR_REMOVAL_MAX_FRACTION": "1", "MIRROR_REMOVAL_MIN_COUNT": "100000",
                "ISIC_TOKEN": None}  # test_login_lost's autouse fixture
    for case, function in hostile_cases():
        env = no_guard if "login" in case else None
        timed(lambda c=case, f=function, e=env: test_case(c, f, e))
    timed(lambda: test_case("superpixel map over its bound", test_decode_bounds.
                            test_a_superpixel_map_over_its_bound_is_refused_before_it_is_allocated))
    timed(lambda: test_case("verify --repair keeps superpixels after a size change",
                            test_decode_bounds.
                            test_verify_repair_keeps_a_good_superpixel_file_after_a_pixel_size_change))
    timed(lambda: baseline_case(6))
    timed(lambda: bomb_case(2))
    timed(lambda: slow_case(4))


def one_shot(case: str, problems: list[str]) -> Tally:
    """A case that runs once and reports a list of problems."""
    tally = Tally(case)
    tally.record(problems, [], False)
    return tally


def run(work: Path, images: int, kills: int, seed: int, hostile_only: bool = False
        ) -> list[tuple[Tally, float]]:
    """Every case; returns (tally, seconds) rows."""
    rows = []

    def timed(make):
        started = time.monotonic()
        tally = make()
        rows.append((tally, time.monotonic() - started))
        print(f"  {tally.case}: {tally.passed}/{tally.tried}", file=sys.stderr, flush=True)
        for failure in tally.failures[:5]:
            print(f"    {failure}", file=sys.stderr)

    run_hostile(rows, timed)
    if hostile_only:
        return rows

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
    parser.add_argument("--hostile-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIRROR_STATE_DIR"] = str(Path(tmp) / "state")
        rows = run(Path(tmp), args.images, args.kills, args.seed, args.hostile_only)

    def bound(case: str, value: str) -> str:
        b = BOUNDS.get(case)
        return f"{getattr(b, value):.{0 if value == 'peak_mib' else 1}f}" if b else ""

    print(tabulate([(t.case, t.tried, t.passed, t.killed, t.data_lost,
                     bound(t.case, "peak_mib"), bound(t.case, "seconds"), f"{s:.0f}")
                    for t, s in rows],
                   headers=["case", "tried", "passed", "killed", "data lost",
                            "worst RSS MiB", "worst s to error", "seconds"],
                   tablefmt="github"))
    sys.exit(0 if all(t.passed == t.tried and t.data_lost == 0 for t, _ in rows) else 1)


if __name__ == "__main__":
    main()
