"""The contract every source's sandbox must pass, through the real CLI.

First sync, a no-op re-sync's request count, ``kill -9`` and resume, verify, reindex from
the files alone, and snapshot create → export → build on a fresh root → byte-identical
export. Each test runs once per case of :mod:`tests.contract.cases`.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pytest

from mirror.api import Mirror
from mirror.status import mirror_status
from mirror.verify import verify_mirror
from tests.contract.cases import CASES, SourceCase
from tests.reliability.helpers import run_mirror, start_sync

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=CASES, ids=[c.name for c in CASES], scope="module")
def case(request) -> SourceCase:
    return request.param


@pytest.fixture(scope="module")
def synced(case, tmp_path_factory):
    """A sandbox and a complete first sync of it."""
    root = tmp_path_factory.mktemp(case.name) / "m"
    with case.start() as archive:
        done = _sync(root, archive)
        yield root, archive, done


def _sync(root: Path, archive, *extra: str):
    return run_mirror("sync", "--root", str(root), "--url", archive.url, "--quiet", "--json",
                      *archive.sync_args, *extra)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_first_sync_stores_a_verified_mirror(synced):
    root, _, done = synced
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["failures"] == []
    status = mirror_status(root)
    assert sum(k["current"] for k in status["objects"].values()) > 0
    assert sum(b["files"] for b in status["blobs"].values()) > 0
    report = verify_mirror(root)
    assert report.ok and report.checked > 0, report.problems


def test_noop_resync_is_cheap_and_downloads_nothing(case, synced):
    root, archive, _ = synced
    before = archive.requests()
    done = _sync(root, archive)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["bytes"] == 0 and summary["plan"]["files"] == 0
    assert archive.requests() - before <= case.noop_requests


def test_kill_9_then_resume_gives_the_same_mirror(case, synced, tmp_path):
    root, archive, _ = synced
    crashed = tmp_path / "crashed"
    child = start_sync(crashed, archive.url, *archive.sync_args)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(crashed.glob("*/store/*/*")):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = _sync(crashed, archive)
    assert done.returncode == 0, done.stderr
    assert verify_mirror(crashed).ok
    same = {k: v for k, v in mirror_status(crashed)["objects"].items()}
    assert same == mirror_status(root)["objects"]
    layout = next(crashed.glob("*/store")).parent
    original = next(root.glob("*/store")).parent
    assert _tree_digest(layout / "store") == _tree_digest(original / "store")


def test_reindex_from_the_files_alone_keeps_every_object(synced):
    root, _, _ = synced
    before = mirror_status(root)
    done = run_mirror("reindex", "--root", str(root))
    assert done.returncode == 0, done.stderr
    after = mirror_status(root)
    assert after["objects"] == before["objects"]
    assert after["blobs"] == before["blobs"]
    assert verify_mirror(root).ok


def test_snapshot_rebuilt_on_a_fresh_root_exports_the_same_bytes(case, synced, tmp_path):
    if case.snapshots is not None:
        pytest.skip(case.snapshots)
    root, archive, _ = synced
    done = run_mirror("snapshot", "create", "--root", str(root), "contract", *case.snapshot_args)
    assert done.returncode == 0, done.stderr
    first = tmp_path / "first"
    assert run_mirror("snapshot", "export", "--root", str(root), "contract",
                      str(first)).returncode == 0
    manifest = next(root.glob("*/snapshots/contract/snapshot.json"))
    fresh = tmp_path / "fresh"
    done = run_mirror("snapshot", "build", str(manifest), "--root", str(fresh),
                      "--url", archive.url)
    assert done.returncode == 0, done.stdout + done.stderr
    second = tmp_path / "second"
    assert run_mirror("snapshot", "export", "--root", str(fresh), "contract",
                      str(second)).returncode == 0
    assert _tree_digest(first) == _tree_digest(second)
    assert len(_tree_digest(first)) > 2


# -- mirror fields and mirror names -------------------------------------------------------

# what 'mirror fields' and 'mirror names' must list for each source (main table first)
FIELDS_EXPECTED = {
    "isic-v1": (("images", "segmentations", "datasets", "studies"),
                {"images": ("meta.clinical.diagnosis", "dataset.name")},
                ("datasets", "studies")),
    "tcia-v4": (("series", "instances", "collections", "patients", "studies"),
                {"series": ("Collection", "Modality"), "patients": ("PatientID",),
                 "studies": ("StudyInstanceUID",)}, ("collections",)),
    "tcia-v3": (("series", "instances", "collections", "patients", "studies"),
                {"series": ("Collection", "Modality"), "patients": ("PatientID",)},
                ("collections",)),
    "isic-v2": (("images", "collections"), {"images": ("isic_id",)}, ("collections",)),
    "idc": (("series", "instances", "collections"),
            {"series": ("collection_id", "Modality"), "instances": ("SOPInstanceUID",)},
            ("collections",)),
}


def _documents(root, kind: str) -> list[dict]:
    with Mirror(root) as m:
        return [m.document(kind, i) for i in m.ids(kind)]


def _value(doc: dict, path: str):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def test_fields_lists_every_kind_with_counts_types_and_examples(case, synced):
    """``mirror fields`` (issue 17: no way to discover names); each field's count and
    examples are checked against the stored documents, not the projection they come from."""
    name, root = case.name, synced[0]
    tables, paths, _ = FIELDS_EXPECTED[name]
    done = run_mirror("fields", "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(tables) <= set(data), data.keys()
    with Mirror(root) as m:
        kinds = {k.table: k.name for k in m.source.kinds}
    for table, wanted in paths.items():
        fields = {f["field"]: f for f in data[table]["fields"]}
        docs = _documents(root, kinds[table])
        assert data[table]["objects"] == len(docs) > 0
        for path in wanted:
            assert path in fields, (table, path, sorted(fields)[:30])
            values = [_value(d, path) for d in docs]
            having = [v for v in values if v is not None]
            assert fields[path]["count"] == len(having), path
            assert fields[path]["types"] == {"text": len(having)}, path
            assert fields[path]["examples"] and set(fields[path]["examples"]) <= set(having)
    text = run_mirror("fields", "--root", str(root), tables[0])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{tables[0]}: {data[tables[0]]['objects']} object(s), ")
    assert any(line.split()[0] == "_id" and "text" in line for line in lines[1:])


def test_names_lists_the_groups_the_mirror_holds(case, synced):
    name, root = case.name, synced[0]
    groups = FIELDS_EXPECTED[name][2]
    done = run_mirror("names", "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert tuple(data) == groups
    main = FIELDS_EXPECTED[name][0][0]
    with Mirror(root) as m:
        objects = len(m.select(main))
    for label in groups:
        assert data[label] and all(row["name"] for row in data[label]), data[label]
        if name != "isic-v2" and label != "studies":  # members counted: all objects, once
            assert sum(row[main] for row in data[label]) == objects, data[label]
        one = run_mirror("names", "--root", str(root), label)
        assert one.returncode == 0 and one.stdout.startswith(f"{label}: {len(data[label])}\n")
    bad = run_mirror("names", "--root", str(root), "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert f"it has: {', '.join(groups)}" in bad.stderr
