"""The sync engine against a hostile archive (``serve(hostile=...)``, see docs/sandbox.md).

Every test follows one script (:func:`hostile_run`): mirror a well-formed sandbox, record
the SHA-256 of every file, turn one hostile case on (and add images, so that new victims are
fetched under it), sync again, then check the invariants that must hold whatever the archive
does: the run ends with a clear error or with the bad items skipped and reported; nothing is
written outside the mirror root and no file is named after a hostile name; every earlier
file is byte-identical; the index names no HTML page (or other non-image) as an image;
``mirror verify`` is clean; and once the archive behaves again, a sync completes.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import mirror.sources.isic_v1.client
from mirror.cli import main
from mirror.config import layout_for, load_config
from mirror.errors import MirrorError
from mirror.index import Blob
from mirror.index.database import open_reader
from mirror.sources import http
from mirror.sources.isic_v1.models import Dataset, Image
from mirror.sources.isic_v1.sandbox import Sandbox, serve
from mirror.sources.isic_v1.sandbox.hostile import CASES, Hostile
from mirror.sync import SyncOptions, SyncSummary, sync
from mirror.verify import verify_mirror

SEED = 3
BASE_IMAGES = 10  # mirrored before the archive turns hostile
ADDED = 20  # added afterwards: fetched under the hostile case (both variants of it)
FILE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
HOSTILE_FRAGMENTS = ("escaped", "passwd", "windows", "AAAAAAAAAA", "9999999", "tmp",
                     "not-an-object-id", "ZZZZ")
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
pytestmark = pytest.mark.timeout(60)


@dataclass
class Outcome:
    """What the hostile run did, for the case-specific assertions."""

    summary: SyncSummary | None  # None when the run stopped with an error
    error: MirrorError | None
    victims: list[str]  # image ids the case corrupted (old and new)
    new_victims: list[str]  # of which added after the first sync: fetched under the case
    sandbox: Sandbox
    root: Path
    names: set[str]  # image and dataset names in the index after the hostile run
    decoy_hits: list[dict]  # requests the redirect decoy saw (should be none)

    def failed_ids(self, role: str | None = None) -> set[str]:
        return {f.object_id for f in self.summary.failures if role in (None, f.role)}


@pytest.fixture(autouse=True)
def _quick_client(monkeypatch):
    """Few, fast retries and short timeouts: a hostile item fails in well under a second."""
    original = http.HttpClient.__init__

    def quick(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.attempts, self.backoff, self.max_backoff, self.timeout = 3, 0.01, 0.05, 5.0

    monkeypatch.setattr(http.HttpClient, "__init__", quick)


def hostile_run(tmp_path: Path, case: str, options: SyncOptions) -> Outcome:
    """Mirror, turn ``case`` on, sync again; check every invariant; return what happened."""
    root = tmp_path / "mirror"
    with serve(images=BASE_IMAGES, seed=SEED, private_fraction=0.0) as sb:
        first = sync(root, sb.url, options)
        assert first.ok, first.failures
        before = _hashes(root)
        neighbours = _entries(tmp_path.parent), _entries(tmp_path)
        sb.hostile = Hostile.parse(case, sb.archive, SEED)
        old_victims = sb.hostile.victims(case)  # re-fetched: their `updated` moves on
        sb.mutate(add=ADDED, update_ids=old_victims)
        victims = sb.hostile.victims(case)
        try:
            summary, error = sync(root, sb.url, options), None
        except MirrorError as exc:
            summary, error = None, exc
        names = {r.name for model in (Image, Dataset) for r in _rows(root, model)}
        decoy = sb.hostile.decoy
        outcome = Outcome(summary, error, victims, [v for v in victims if v not in old_victims],
                          sb, root, names, list(decoy.hits) if decoy else [])
        _check_invariants(outcome, before, neighbours, tmp_path)
        sb.hostile.close()
        sb.hostile = None  # the archive mends its ways (and says so): the next sync completes
        sb.mutate(update_ids=victims)
        again = sync(root, sb.url, options)
        assert again.ok, again.failures
        assert verify_mirror(root).ok
    return outcome


def _check_invariants(outcome: Outcome, before: dict[str, str], neighbours: tuple,
                      tmp_path: Path) -> None:
    root = outcome.root
    assert outcome.error is not None or not outcome.summary.ok, "the run hid the hostility"
    if outcome.summary is not None:
        lines = "\n".join(outcome.summary.summary_lines())
        assert "NOT mirrored" in lines
    assert (_entries(tmp_path.parent), _entries(tmp_path)) == neighbours, "wrote outside root"
    for relpath in _files(root):
        name = Path(relpath).name
        assert SAFE_FILE_NAME.match(name), relpath
        assert not any(bad in name for bad in HOSTILE_FRAGMENTS), relpath
        assert os.path.realpath(root / relpath).startswith(str(root.resolve()) + os.sep)
    after = _hashes(root)
    for relpath, digest in before.items():
        if relpath.startswith("isic/store/"):  # store files are never rewritten
            assert after.get(relpath) == digest, f"{relpath} changed"
        # the index generations and mirror.json are legitimately superseded by a sync
    _check_index_names_only_images(root)
    report = verify_mirror(root)
    assert report.ok, report.problems


def _check_index_names_only_images(root: Path) -> None:
    base = layout_for(root, load_config(root)).base
    for blob in _rows(root, Blob):
        if blob.role in ("image", "thumbnail", "superpixels", "mask"):
            head = (base / blob.path).read_bytes()[:8]
            assert head.startswith(FILE_MAGIC), (blob.path, head)
            assert blob.content_type.startswith("image/"), blob.content_type
    for image in _rows(root, Image):
        assert re.match(r"^[0-9a-f]{24}$", image.id), image.id


def _rows(root: Path, model) -> list:
    engine = open_reader(layout_for(root, load_config(root)))
    try:
        with engine.connect() as conn:
            return conn.execute(select(model)).all()
    finally:
        engine.dispose()


def _files(root: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(root)) for d, _, fs in os.walk(root) for f in fs)


def _hashes(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in _files(root)}


def _entries(folder: Path) -> set[str]:
    return set(os.listdir(folder))


# Studies are left out: adding images changes a study, and the study's superseded markup
# file is then a stray until `mirror gc` (verify calls it orphaned), which is not hostility.
DOCS = frozenset({"images", "datasets", "segmentations"})
FULL = SyncOptions(workers=4, what=DOCS, blobs=frozenset({"full"}))
NO_BLOBS = SyncOptions(workers=4, what=DOCS, blobs=frozenset())


# -- the cases ---------------------------------------------------------------------------------


def test_names_that_are_paths_or_control_characters_are_never_file_names(tmp_path):
    out = hostile_run(tmp_path, "names", FULL)
    assert out.failed_ids("image") == set(out.new_victims)
    assert all("unsafe name" in f.error for f in out.summary.failures)
    assert "../../../tmp/\x00dataset\x07" in out.names  # kept as data, never as a path
    assert "/etc/passwd" in out.names or "../../escaped" in out.names


def test_html_pages_with_status_200_are_not_stored_as_images(tmp_path):
    out = hostile_run(tmp_path, "html", FULL)
    assert out.failed_ids("image") == set(out.new_victims)


def test_content_length_lies_in_either_direction_are_refused(tmp_path):
    out = hostile_run(tmp_path, "length", FULL)
    assert out.failed_ids("image") == set(out.new_victims)


def test_endless_and_huge_bodies_are_cut_off(tmp_path):
    out = hostile_run(tmp_path, "endless", FULL)
    assert out.failed_ids("image") == set(out.new_victims)
    assert out.summary.seconds < 20
    assert out.summary.bytes_downloaded < 100 * 2**20


def test_invalid_json_and_invalid_utf8_are_reported_not_stored(tmp_path):
    out = hostile_run(tmp_path, "json", NO_BLOBS)
    assert out.failed_ids("json") == set(out.victims)


def test_non_hex_and_duplicate_ids_in_listings(tmp_path):
    out = hostile_run(tmp_path, "ids", NO_BLOBS)
    listed = [f for f in out.summary.failures if f.role == "listing"]
    assert len([f for f in listed if f.kind == "image"]) == 3  # each garbage id, once
    assert len([f for f in listed if f.kind == "segmentation"]) == len(out.victims)
    assert all(f.object_id.isprintable() for f in listed)
    images = _rows(out.root, Image)
    assert len(images) == len({r.id for r in images}) == BASE_IMAGES + ADDED


def test_pagination_that_repeats_or_skips_items_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(mirror.sources.isic_v1.client, "DETAIL_PAGE", 4)  # page through 10 images
    out = hostile_run(tmp_path, "paging", NO_BLOBS)
    assert out.error is not None and "listing" in str(out.error)
    assert not any(r.removed for r in _rows(out.root, Image)), "a skipped image was 'removed'"


def test_superpixels_of_the_wrong_size_or_mode_are_refused(tmp_path):
    out = hostile_run(tmp_path, "superpixels",
                      SyncOptions(workers=4, what=DOCS, blobs=frozenset({"superpixels"})))
    assert out.failed_ids("superpixels") == set(out.new_victims)


def test_redirects_to_other_hosts_are_not_followed(tmp_path):
    out = hostile_run(tmp_path, "redirect", FULL)
    assert out.failed_ids("image") == set(out.new_victims)
    assert all("redirect" in f.error for f in out.summary.failures)
    assert out.decoy_hits == []  # never asked: no bytes from, no token to, another host


def test_cli_against_every_case_at_once_exits_non_zero_and_lists_failures(tmp_path):
    root = tmp_path / "mirror"
    with serve(images=BASE_IMAGES + ADDED, seed=SEED, private_fraction=0.0,
               hostile="all") as sb:
        assert sb.hostile.cases == frozenset(CASES)
        result = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                           "--quiet", "--blobs", "full,superpixels"])
        decoy_hits = list(sb.hostile.decoy.hits)
    assert result.exit_code != 0
    assert "NOT mirrored" in result.output or "error:" in result.output
    assert "Traceback" not in result.output
    assert decoy_hits == []
