"""ISIC v1's documents phase: datasets, images, segmentations, studies, annotations.

Change detection is cheap on purpose: one listing of image summaries
(``{_id, name, updated}``) tells which images are new or changed, so details
are fetched only for those, 300 per request. Segmentation lists are fetched
for new and changed images; annotations for new and changed studies. A no-op
re-sync therefore costs a handful of requests whatever the archive's size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from sqlalchemy import select

from mirror.config import utc_now
from mirror.errors import MirrorError, RemovalGuardError
from mirror.index import Blob, Listing
from mirror.ingest import ingest_document_file
from mirror.sources.base import HEX_ID, DocumentRun
from mirror.sources.isic_v1.client import IMAGE_IDS_PER_REQUEST, IsicClient
from mirror.sources.isic_v1.models import Annotation, Image, Segmentation, Study
from mirror.store import StoredFile
from mirror.sync.pool import completed

log = logging.getLogger("mirror.sync")
Stored = tuple[dict, StoredFile]


class DocumentSync:
    """Fetches, stores and indexes the ISIC documents one run asks for (through ``run``)."""

    def __init__(self, source: IsicClient, run: DocumentRun):
        self.source, self.run = source, run
        self.store, self.session, self.executor = run.store, run.session, run.executor
        self.summary, self.public, self.window = run.summary, run.public, run.window
        self.commit, self.store_docs, self.record = run.commit, run.store_docs, run.record
        self.remove_missing = run.remove_missing

    # -- datasets and images ---------------------------------------------------------------

    def sync_datasets(self) -> list[dict]:
        docs = self.source.datasets()
        self.record("dataset", self.store_docs("dataset", docs), public=self.public)
        self.remove_missing("dataset", {d["_id"] for d in docs})
        return docs

    def plan_images(self, restrict_to: set[str] | None, limit: int | None
                    ) -> tuple[list[str], set[str], bool]:
        """Ids whose detail must be fetched, the ids listed, and whether the listing is whole."""
        summaries, bad = checked_listing(self.source.image_summaries())
        for shown in bad:
            self.summary.fail("image", shown, "listing", "not an ObjectId; skipped")
        complete = restrict_to is None and limit is None
        if restrict_to is not None:
            summaries = [s for s in summaries if s["_id"] in restrict_to]
        if limit is not None:
            summaries = summaries[:limit]
        known = dict(self.session.execute(
            select(Image.id, Image.updated).where(Image.removed.is_(False))).all())
        todo = [s["_id"] for s in summaries
                if s["_id"] not in known or known[s["_id"]] != s.get("updated")]
        self.summary.count("image", "unchanged", len(summaries) - len(todo))
        return todo, {s["_id"] for s in summaries}, complete

    def sync_images(self, todo: list[str], keep: Callable[[dict], bool]) -> list[str]:
        """Fetch, store and index details of ``todo``; returns the ids kept."""
        batches = [todo[i:i + IMAGE_IDS_PER_REQUEST]
                   for i in range(0, len(todo), IMAGE_IDS_PER_REQUEST)]
        kept: list[str] = []
        for _, future in completed(self.executor, self._fetch_images, batches, self.window):
            try:
                stored = future.result()
            except Exception as exc:  # noqa: BLE001 - recorded, retried next run
                self.summary.fail("image", "(batch)", "json", exc)
                continue
            stored = [(doc, info) for doc, info in stored if keep(doc)]
            self.record("image", stored, public=self.public)
            kept += [doc["_id"] for doc, _ in stored]
            self.commit()
        return kept

    def _fetch_images(self, ids: list[str]) -> list[Stored]:
        asked = set(ids)  # never store a document we did not ask for
        docs = self.source.image_details(ids)
        return self.store_docs("image", [d for d in docs if d.get("_id") in asked])

    # -- segmentations ----------------------------------------------------------------------

    def images_needing_segmentations(self, image_ids: set[str] | None) -> list[str]:
        """Images (of ``image_ids``; None: all) whose segmentation list was never fetched
        for their current version."""
        rows = self.session.execute(select(Image.id, Image.updated).where(
            Image.removed.is_(False))).all()
        listed = dict(self.session.execute(select(Listing.key, Listing.digest).where(
            Listing.key.like("segmentation:%"))).all())
        return sorted(i for i, updated in rows if (image_ids is None or i in image_ids)
                      and listed.get(f"segmentation:{i}") != (updated or ""))

    def sync_segmentations(self, image_ids: list[str]) -> None:
        updated = dict(self.session.execute(select(Image.id, Image.updated)).all())
        work = completed(self.executor, self._fetch_segmentations, image_ids, self.window)
        for n, (image_id, future) in enumerate(work, 1):
            try:
                stored, bad = future.result()
            except Exception as exc:  # noqa: BLE001
                self.summary.fail("segmentation", image_id, "json", exc)
                continue
            self.record("segmentation", stored)
            for shown in bad:
                self.summary.fail("segmentation", shown, "listing",
                                  f"not an ObjectId (listed for image {image_id}); skipped")
            if bad:  # the list is suspect: fetch it again next run, remove nothing
                continue
            try:
                self._remove_stale_segmentations(image_id, {d["_id"] for d, _ in stored})
            except RemovalGuardError as exc:  # suspect list: keep them, ask again next run
                self.summary.fail("segmentation", image_id, "listing", exc)
                continue
            self.session.merge(Listing(key=f"segmentation:{image_id}",
                                       digest=updated.get(image_id) or "", count=len(stored),
                                       fetched_at=utc_now()))
            if n % 200 == 0:
                self.commit()
        self.commit()

    def _fetch_segmentations(self, image_id: str) -> tuple[list[Stored], list[str]]:
        """The image's segmentation documents, and the listed ids that are not ObjectIds."""
        items, bad = checked_listing(self.source.segmentations(image_id))
        docs = [self.source.segmentation(item["_id"]) for item in items]
        return self.store_docs("segmentation", docs), bad

    def _remove_stale_segmentations(self, image_id: str, listed: set[str]) -> None:
        old = set(self.session.scalars(select(Segmentation.id).where(
            Segmentation.image_id == image_id, Segmentation.removed.is_(False))))
        self.remove_missing("segmentation", listed, within=old,
                            where=f"the segmentation listing of image {image_id}")

    # -- studies and annotations ------------------------------------------------------------

    def sync_studies(self, only: str | None) -> list[dict]:
        docs = self.source.studies()
        if only is not None:
            docs = [d for d in docs if only in (d.get("name"), d["_id"])]
        known = dict(self.session.execute(select(Study.id, Study.doc_sha256)).all())
        stored = self.store_docs("study", docs)
        changed = {doc["_id"] for doc, info in stored if known.get(doc["_id"]) != info.sha256}
        self.record("study", stored)
        if only is None:
            self.remove_missing("study", {d["_id"] for d in docs})
        self.commit()
        return [d for d in docs if d["_id"] in changed or self._annotations_missing(d)]

    def _annotations_missing(self, study: dict) -> bool:
        row = self.session.get(Listing, f"annotation:{study['_id']}")
        return row is None or row.digest != study.get("updated", "")

    def sync_annotations(self, studies: list[dict], markups: bool) -> None:
        for study in studies:
            try:
                docs = self.source.annotations(study["_id"])
                stored = self.store_docs("annotation", docs)
            except Exception as exc:  # noqa: BLE001
                self.summary.fail("annotation", study["_id"], "json", exc)
                continue
            unchanged = self._unchanged_markups(stored)
            self.record("annotation", stored)
            complete = True
            if markups:
                values, complete = self._sync_markups([d for d, _ in stored], unchanged)
                if complete:
                    self._store_study_markups(study["_id"], values)
            if complete:  # else the next run fetches this study's annotations again
                self.session.merge(Listing(key=f"annotation:{study['_id']}",
                                           digest=study.get("updated", ""), count=len(docs),
                                           fetched_at=utc_now()))
            self.commit()

    def _unchanged_markups(self, stored: list[Stored]) -> dict[str, str]:
        """Markup files still valid: same features marked, same submission (``stopTime``).

        Other changes to an annotation document (its image's ``updated``, say) leave the
        superpixel values alone, so they are not fetched again.
        """
        known = dict(self.session.execute(select(Annotation.id, Annotation.doc).where(
            Annotation.id.in_([doc["_id"] for doc, _ in stored]))).all())

        def unchanged(new: dict, old: dict | None) -> bool:
            return old is not None and all(new.get(k) == old.get(k)
                                           for k in ("markups", "stopTime", "state"))

        same = [doc["_id"] for doc, _ in stored if unchanged(doc, known.get(doc["_id"]))]
        return dict(self.session.execute(select(Blob.object_id, Blob.path).where(
            Blob.object_id.in_(same), Blob.role == "markups")).all())

    def _sync_markups(self, annotations: list[dict], unchanged: dict[str, str]
                      ) -> tuple[dict[str, dict], bool]:
        """Per-feature superpixel values of complete annotations, one JSON file each."""
        wanted = [a for a in annotations
                  if a.get("state") == "complete" and any((a.get("markups") or {}).values())]
        values = {a["_id"]: self.store.read_json(unchanged[a["_id"]])["markups"]
                  for a in wanted if a["_id"] in unchanged}
        complete = True
        todo = [a for a in wanted if a["_id"] not in unchanged]
        for annotation, future in completed(self.executor, self._fetch_markups, todo,
                                            self.window):
            annotation_id = annotation["_id"]
            try:
                info, values[annotation_id] = future.result()
            except Exception as exc:  # noqa: BLE001
                self.summary.fail("annotation", annotation_id, "markups", exc)
                complete = False
                continue
            ingest_document_file(self.session, "markup", annotation_id, "markups",
                                 info.relpath, info.sha256, info.size, utc_now())
            self.summary.blobs[("markups", "fetched")] += 1
        return values, complete

    def _fetch_markups(self, annotation: dict) -> tuple[StoredFile, dict]:
        features = sorted(f for f, present in annotation["markups"].items() if present)
        values = {f: self.source.markup_superpixels(annotation["_id"], f) for f in features}
        info = self.store.put_json("markup", annotation["_id"],
                                   {"_id": annotation["_id"], "markups": values})
        return info, values

    def _store_study_markups(self, study_id: str, values: dict[str, dict]) -> None:
        """All of a study's markups in one file, so they load in one read (isicarchive's stann)."""
        info = self.store.put_json("markup", study_id, {"_id": study_id, "annotations": values})
        ingest_document_file(self.session, "markup", study_id, "markups", info.relpath,
                             info.sha256, info.size, utc_now())


def checked_listing(items: Iterable[object]) -> tuple[list[dict], list[str]]:
    """Listed items with an ObjectId ``_id``, each once; and the others, shown safely.

    Ids go into URLs, file names and batch requests (one bad id makes the archive
    refuse a whole batch of 300), so only 24 lower-case hex digits pass.
    """
    good: dict[str, dict] = {}
    bad: list[str] = []
    for item in items:
        object_id = item.get("_id") if isinstance(item, dict) else None
        if isinstance(object_id, str) and HEX_ID.fullmatch(object_id):
            good.setdefault(object_id, item)  # a repeated id counts once
        else:
            bad.append(ascii(object_id)[:60])  # printable: the summary goes to a terminal
    return list(good.values()), bad


def dataset_filter(docs: list[dict], wanted: str | None) -> Callable[[dict], bool]:
    """A predicate keeping images of the dataset named (or id'd) ``wanted``."""
    if wanted is None:
        return lambda doc: True
    ids = {d["_id"] for d in docs if wanted in (d.get("name"), d["_id"])}
    if not ids:
        names = ", ".join(sorted(str(d.get("name")) for d in docs)) or "none"
        raise MirrorError(f"no dataset named {wanted!r}; the archive has: {names}")
    return lambda doc: (doc.get("dataset") or {}).get("_id") in ids

