"""Malformed documents are failed items, never a traceback (issue 16).

The archive serves, for a few objects, a document that no real archive would: a name that
is a list or an object, a reference that is an object, nesting deeper than any document,
no id at all. Each is one failure naming the object and the field; every other object is
mirrored and the run publishes, on a new mirror too; nothing is marked removed because
of them; once the archive serves them well again a sync completes and verifies.

The sandbox's documents are rewritten by patching its archive model (the server runs in
this process), in the listing (``image?detail=true``), the batch detail path
(``image?imageIds=``) and the per-object detail (``segmentation/{id}``).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.base import KindSpec, document_problem
from mirror.sources.isic_v1.sandbox import serve
from mirror.sources.isic_v1.sandbox.data import Archive
from mirror.sources.isic_v1.shape import Response, V1Api
from mirror.sources.isic_v1.spec import SPEC
from mirror.status import mirror_status
from mirror.sync import SyncOptions, sync
from mirror.verify import verify_mirror

pytestmark = pytest.mark.timeout(120)
IMAGES = 12


def _deep(levels: int) -> dict:
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


# image index -> (how its detail is broken, the field the failure must name)
BROKEN = {
    1: (lambda d: d.update(name=["ISIC_1", "ISIC_2"]), "'name' is a list"),
    4: (lambda d: d.update(name={"$set": "x"}), "'name' is an object"),
    6: (lambda d: d.update(dataset="5a2ecc5d1165975c94594284"), "'dataset' is text"),
    9: (lambda d: d["meta"].update(deep=_deep(150)), "'meta' nests deeper than 100"),
}
SEGMENTED = 3  # whose segmentations name their image as an object


def _break(monkeypatch) -> None:
    real_detail = Archive.image_detail

    def detail(self, i):
        doc = real_detail(self, i)
        if i in BROKEN:
            BROKEN[i][0](doc)
        return doc

    real_handle = V1Api.handle

    def handle(self, method, path, query, headers):
        """The segmentation details of image SEGMENTED come with an object for imageId, as
        a mangling proxy would send them (the archive itself resolves imageId first)."""
        pattern, reply = real_handle(self, method, path, query, headers)
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "segmentation" and reply.status == 200:
            doc = json.loads(reply.body)
            if doc.get("imageId") == self.backend.archive.image_id(SEGMENTED):
                doc["imageId"] = {"$oid": doc["imageId"]}
                reply = Response.json(doc)
        return pattern, reply

    monkeypatch.setattr(Archive, "image_detail", detail)
    monkeypatch.setattr(V1Api, "handle", handle)


def _failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if "malformed" in line]


def test_malformed_documents_fail_alone_and_a_new_mirror_publishes(tmp_path, monkeypatch):
    root = tmp_path / "m"
    args = ["sync", "--root", str(root), "--blobs", "thumbnail", "--what",
            "images,datasets,segmentations"]
    with serve(images=IMAGES, seed=91, private_fraction=0.0) as sb:
        ids = [sb.archive.image_id(i) for i in range(IMAGES)]
        segs = [sb.archive.segmentation_id(SEGMENTED, j)
                for j in range(sb.archive.segmentation_count(SEGMENTED))]
        assert segs  # the sandbox gives this image segmentations
        with monkeypatch.context() as patch:
            _break(patch)
            done = CliRunner().invoke(main, [*args, "--url", sb.url])
        assert done.exit_code == 1, done.output
        assert "Traceback" not in done.output and "NOT mirrored" in done.output
        lines = _failures(done.output)
        for i, (_, field) in BROKEN.items():
            assert any(ids[i] in line and field in line for line in lines), (field, lines)
        assert any("'imageId' is an object" in line for line in lines), lines
        assert all(any(s in line for line in lines) for s in segs)
        status = mirror_status(root)
        assert status["generation"] is not None  # published, though this was a new mirror
        assert status["objects"]["image"] == {"current": IMAGES - len(BROKEN), "removed": 0}
        assert verify_mirror(root).ok

        # an incremental sync meets them again: they fail again, nothing is marked removed
        with monkeypatch.context() as patch:
            _break(patch)
            sb.mutate(update_ids=[ids[i] for i in BROKEN])
            again = CliRunner().invoke(main, args)
        assert again.exit_code == 1 and len(_failures(again.output)) >= len(BROKEN)
        assert mirror_status(root)["objects"]["image"]["removed"] == 0

        clean = CliRunner().invoke(main, args)  # the archive mends its ways
        assert clean.exit_code == 0, clean.output
        assert mirror_status(root)["objects"]["image"] == {"current": IMAGES, "removed": 0}
        seg_total = sum(sb.archive.segmentation_count(i) for i in range(IMAGES))
        assert mirror_status(root)["objects"]["segmentation"] == {"current": seg_total,
                                                                  "removed": 0}
        assert CliRunner().invoke(main, ["verify", "--root", str(root)]).exit_code == 0


def test_the_batch_detail_path_fails_the_same_documents(tmp_path, monkeypatch):
    root = tmp_path / "m"
    options = SyncOptions(blobs=frozenset(), what=frozenset({"images", "datasets"}))
    with serve(images=IMAGES, seed=92, private_fraction=0.0) as sb:
        wanted = frozenset(sb.archive.image_id(i) for i in (0, 1, 2, 4))
        with monkeypatch.context() as patch:
            _break(patch)
            summary = sync(root, sb.url, SyncOptions(**{**options.__dict__,
                                                        "image_ids": wanted}))
        failed = {f.object_id: f.error for f in summary.failures}
        assert set(failed) == {sb.archive.image_id(1), sb.archive.image_id(4)}, failed
        assert all("malformed image document" in e for e in failed.values())
        assert summary.generation is not None and verify_mirror(root).ok


@pytest.mark.parametrize(("doc", "problem"), [
    ({"name": "x"}, "field '_id' is missing"),
    ({"_id": "5436e3abbae478396759f0c3\n"}, "not a valid image id"),
    ({"_id": "5436e3abbae478396759f0c3", "name": 7}, "field 'name' is a number"),
    ({"_id": "5436e3abbae478396759f0c3", "dataset": {"_id": ["x"]}},
     "field 'dataset._id' is a list, expected text"),
    ([1, 2], "not a JSON object but a list"),
])
def test_the_rule_names_the_field(doc, problem):
    kind: KindSpec = SPEC.kind("image")
    found = document_problem(kind, doc, 100)
    assert found is not None and problem in found


def test_tcia_malformed_series_rows_fail_alone(tmp_path, monkeypatch):
    """A getSeries row with a list for its description (a document field) and one whose
    SeriesInstanceUID is an object (no usable id) fail alone; the rest is mirrored."""
    import json

    from mirror.sources.tcia.formats import Response
    from mirror.sources.tcia.sandbox import start
    from mirror.sources.tcia.sandbox.api import TciaAPI

    real = TciaAPI.v4_series

    def series(self, params):
        response = real(self, params)
        if not response.body:
            return response
        rows = json.loads(response.body)
        for row in rows:
            if row["SeriesInstanceUID"] == victims[0]:
                row["SeriesDescription"] = ["CT", "chest"]
            elif row["SeriesInstanceUID"] == victims[1]:
                row["SeriesInstanceUID"] = {"uid": row["SeriesInstanceUID"]}
        return Response.text(json.dumps(rows), content_type="application/json")

    root = tmp_path / "m"
    options = SyncOptions(workers=2)
    victims: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(TciaAPI, "v4_series", series)  # the routes bind it when they start
        broken = start(collections=2, seed=93)
    try:
        victims += sorted(broken.archive.series)[:2]
        summary = sync(root, broken.v4_url, options)
        failed = {f.object_id: f.error for f in summary.failures}
        assert victims[0] in failed and "'SeriesDescription' is a list" in failed[victims[0]]
        assert any("'SeriesInstanceUID' is missing or not a DICOM UID" in e
                   for e in failed.values()), failed
        assert summary.generation is not None and verify_mirror(root).ok
        total = len(broken.archive.series)
        assert mirror_status(root)["objects"]["series"]["current"] == total - 2
    finally:
        broken.stop()
    sb = start(collections=2, seed=93)  # the same archive, well-formed, at a new address
    try:
        clean = sync(root, sb.v4_url, SyncOptions(workers=2, rebase_url=True))
        assert clean.ok, clean.failures
        assert mirror_status(root)["objects"]["series"] == {"current": total, "removed": 0}
        assert verify_mirror(root).ok
    finally:
        sb.stop()


def test_isic_v2_malformed_collection_and_lesion_records_fail_alone(tmp_path, monkeypatch):
    """A collection whose name is a list and a lesion whose id ends in a newline are
    failures; they and every other collection and lesion stay current (none removed)."""
    from mirror.sources.isic_v2.client import TOKEN_ENV
    from mirror.sources.isic_v2.sandbox import start
    from mirror.sources.isic_v2.sandbox.api import SandboxBackend

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    root = tmp_path / "m"
    options = SyncOptions(source="isic-v2", what=frozenset({"collections", "lesions"}),
                          blobs=frozenset())
    with start(images=40, seed=94) as sb:
        assert sync(root, sb.url, options).ok
        before = mirror_status(root)["objects"]
        assert before["collection"]["current"] and before["lesion"]["current"]
        real_collection = SandboxBackend.collection_record
        real_lesion = SandboxBackend.lesion_record

        def collection(c):
            out = real_collection(c)
            return {**out, "name": [out["name"]]} if out["id"] == first else out

        def lesion(self, row):
            out = real_lesion(self, row)
            return {**out, "id": out["id"] + "\n"} if out["id"] == lesion_victim else out

        first = min(sb.archive.collections)
        lesion_victim = sorted(sb.archive.lesions("anonymous"))[0]
        with monkeypatch.context() as patch:
            patch.setattr(SandboxBackend, "collection_record", staticmethod(collection))
            patch.setattr(SandboxBackend, "lesion_record", lesion)
            summary = sync(root, options=SyncOptions(what=options.what, blobs=frozenset()))
        errors = [f.error for f in summary.failures]
        assert any("collection record is malformed" in e for e in errors), errors
        assert any("is not IL_nnnnnnn" in e for e in errors), errors
        assert summary.generation is not None
        assert mirror_status(root)["objects"] == before  # nothing marked removed
        assert sync(root, options=SyncOptions(what=options.what, blobs=frozenset())).ok
        assert verify_mirror(root).ok
