"""ISIC v1's documents phase: datasets, images, segmentations, studies, annotations.

The archive does not say what changed. Girder's ``Item.save`` leaves ``updated`` alone,
and the ISIC code saves QC reviews, metadata and renames through it; a segmentation is
saved on itself only (research notes; the 2019 recording shows 10,122 of 23,906 images
reviewed after their ``updated``). So nothing here trusts ``updated``:

- **images**: every run lists every image *detail* in bulk (``image?detail=true``,
  :data:`~mirror.sources.isic_v1.client.DETAIL_PAGE` per page, pages overlapping by one
  item) and compares each document's canonical SHA-256 with the index; only new and
  changed documents are stored (as new versions) and indexed;
- **segmentations** can only be listed per image (``imageId`` is required), so a run
  re-lists those of images whose document changed (or was never listed), plus a rotating
  share of the others, stalest first: every image once per ``MIRROR_RECHECK_PERIOD``
  runs, and none left unchecked longer than that many days (``--full``: all of them now).
  Each check fetches every segmentation's detail, because a review changes only that;
- **datasets, studies and annotations** are re-listed in full every run (one request
  each, one per study) and compared by hash; superpixel markups are fetched again only
  for annotations whose marks or submission changed.

The cost of a no-op re-sync is in ``docs/sync.md``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mirror import settings
from mirror.config import utc_now
from mirror.errors import MirrorError, RemovalGuardError
from mirror.index import Blob, Listing
from mirror.ingest import ingest_document_file, upsert
from mirror.sources.base import HEX_ID, DocumentRun
from mirror.sources.isic_v1.client import DETAIL_PAGE, IMAGE_IDS_PER_REQUEST, IsicClient
from mirror.sources.isic_v1.models import Annotation, Image, Segmentation
from mirror.store import StoredFile, canonical_json
from mirror.sync.pool import completed

log = logging.getLogger("mirror.sync")
Stored = tuple[dict, StoredFile]
SEGMENTATION_KEY = "segmentation:"  # + image id: the last check of that image's list
ANNOTATION_KEY = "annotation:"  # + study id: the last complete listing of its annotations
SEGMENTATION_BATCH = 200  # checked images indexed (and committed) together


def checked_at() -> str:
    """Now, to the microsecond: the rotation orders checks by it, and runs of one second
    (tests, a quick re-run) must not tie."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def document_sha256(doc: dict) -> str:
    """The hash the store gives ``doc`` (of its canonical JSON), without storing it."""
    return hashlib.sha256(canonical_json(doc)).hexdigest()


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

    def sync_images(self, restrict_to: set[str] | None, limit: int | None,
                    keep: Callable[[dict], bool]) -> tuple[set[str], bool]:
        """List every image detail and record the new and changed ones.

        Returns the ids listed and whether the listing is whole (no scope, no limit), which
        only then may mark images removed. A small scope (a snapshot's images, a study's)
        is fetched by id, 300 to a request, when that costs fewer requests than the bulk
        listing would.
        """
        complete = restrict_to is None and limit is None
        if restrict_to is not None and self._by_id_is_cheaper(len(restrict_to)):
            return self._sync_images_by_id(sorted(restrict_to)[:limit], keep), complete
        listed: set[str] = set()
        for page in self.source.image_detail_pages():
            docs, bad = checked_listing(page)
            for shown in bad:
                self.summary.fail("image", shown, "listing", "not an ObjectId; skipped")
            docs = [d for d in docs if d["_id"] not in listed]  # a repeat counts once
            if restrict_to is not None:
                docs = [d for d in docs if d["_id"] in restrict_to]
            if limit is not None:
                docs = docs[:limit - len(listed)]
            listed.update(d["_id"] for d in docs)
            self._record_images([d for d in docs if keep(d)])
            if limit is not None and len(listed) >= limit:
                break
        return listed, complete

    def _by_id_is_cheaper(self, wanted: int) -> bool:
        known = self.session.query(Image.id).count()
        return math.ceil(wanted / IMAGE_IDS_PER_REQUEST) <= known // (DETAIL_PAGE - 1) + 1

    def _sync_images_by_id(self, ids: list[str], keep: Callable[[dict], bool]) -> set[str]:
        batches = [ids[i:i + IMAGE_IDS_PER_REQUEST]
                   for i in range(0, len(ids), IMAGE_IDS_PER_REQUEST)]
        listed: set[str] = set()
        for _, future in completed(self.executor, self._fetch_images, batches, self.window):
            try:
                docs = future.result()
            except Exception as exc:  # noqa: BLE001 - recorded, retried next run
                self.summary.fail("image", "(batch)", "json", exc)
                continue
            listed.update(d["_id"] for d in docs)
            self._record_images([d for d in docs if keep(d)])
        return listed

    def _fetch_images(self, ids: list[str]) -> list[dict]:
        asked = set(ids)  # never store a document we did not ask for
        docs, _ = checked_listing(self.source.image_details(ids))
        return [d for d in docs if d["_id"] in asked]

    def _record_images(self, docs: list[dict]) -> None:
        """Store and index the documents that differ from the index's current version."""
        if not docs:
            return
        ids = [d["_id"] for d in docs]
        known = dict(self.session.execute(select(Image.id, Image.doc_sha256).where(
            Image.id.in_(ids), Image.removed.is_(False))).all())
        todo = [d for d in docs if known.get(d["_id"]) != document_sha256(d)]
        self.summary.count("image", "unchanged", len(docs) - len(todo))
        if todo:
            self.record("image", self.store_docs("image", todo), public=self.public)
        self.commit()

    # -- segmentations ----------------------------------------------------------------------

    def images_needing_segmentations(self, image_ids: set[str] | None,
                                     full: bool = False) -> list[str]:
        """Images (of ``image_ids``; None: all) whose segmentation list this run checks.

        First those never checked for their current document (new, changed, or a check
        that failed), then the stalest of the others: at least a ``1/MIRROR_RECHECK_PERIOD``
        share, and every one last checked more than that many days ago. ``full``: all.
        """
        rows = self.session.execute(select(Image.id, Image.doc_sha256).where(
            Image.removed.is_(False))).all()
        listed = {key[len(SEGMENTATION_KEY):]: (digest, at) for key, digest, at in
                  self.session.execute(select(Listing.key, Listing.digest, Listing.fetched_at)
                                       .where(Listing.key.like(SEGMENTATION_KEY + "%")))}
        due, rest = [], []
        for image_id, sha in rows:
            if image_ids is not None and image_id not in image_ids:
                continue
            last = listed.get(image_id)
            if last is None or last[0] != sha:
                due.append(image_id)
            else:
                rest.append((last[1], image_id))
        rest.sort()
        if full:
            return sorted(due) + [i for _, i in rest]
        period = recheck_period()
        share = math.ceil((len(due) + len(rest)) / period)
        cutoff = (datetime.now(UTC) - timedelta(days=period)).isoformat(
            timespec="microseconds")
        stale = sum(1 for at, _ in rest if at < cutoff)
        return sorted(due) + [i for _, i in rest[:max(share, stale)]]

    def sync_segmentations(self, image_ids: list[str]) -> None:
        """Re-list each image's segmentations, fetch every detail, record the check.

        Results are indexed a batch of images at a time (one upsert per table, not one per
        image): a no-op re-sync checks thousands of images.
        """
        digests = dict(self.session.execute(select(Image.id, Image.doc_sha256)).all())
        batch: list[tuple[str, list[Stored]]] = []
        work = completed(self.executor, self._fetch_segmentations, image_ids, self.window)
        for image_id, future in work:
            try:
                stored, bad = future.result()
            except Exception as exc:  # noqa: BLE001
                self.summary.fail("segmentation", image_id, "json", exc)
                continue
            for shown in bad:
                if not shown.endswith(" malformed)"):  # those failed on their own
                    self.summary.fail("segmentation", shown, "listing", "not an ObjectId "
                                      f"(listed for image {image_id}); skipped")
            if bad:  # the list is suspect: record what it showed, check it again next run
                self.record("segmentation", stored)
                continue
            batch.append((image_id, stored))
            if len(batch) >= SEGMENTATION_BATCH:
                self._record_checks(batch, digests)
                batch = []
        self._record_checks(batch, digests)

    def _record_checks(self, batch: list[tuple[str, list[Stored]]],
                       digests: dict[str, str]) -> None:
        """Index a batch of checked images' segmentations, mark those their lists no longer
        show removed (within the removal guard), and record each check."""
        self.record("segmentation", [item for _, stored in batch for item in stored])
        listed = {image_id: {d["_id"] for d, _ in stored} for image_id, stored in batch}
        known: dict[str, set[str]] = {i: set() for i in listed}
        for start in range(0, len(batch), 500):
            chunk = list(listed)[start:start + 500]
            for seg_id, image_id in self.session.execute(
                    select(Segmentation.id, Segmentation.image_id).where(
                        Segmentation.image_id.in_(chunk), Segmentation.removed.is_(False))):
                known[image_id].add(seg_id)
        rows = []
        for image_id, stored in batch:
            if known[image_id] - listed[image_id]:
                try:
                    self.remove_missing("segmentation", listed[image_id],
                                        within=known[image_id],
                                        where=f"the segmentation listing of image {image_id}")
                except RemovalGuardError as exc:  # suspect list: keep them, ask again
                    self.summary.fail("segmentation", image_id, "listing", exc)
                    continue
            rows.append({"key": SEGMENTATION_KEY + image_id,
                         "digest": digests.get(image_id) or "", "count": len(stored),
                         "fetched_at": checked_at()})
        upsert(self.session, Listing, rows)
        self.commit()

    def _fetch_segmentations(self, image_id: str) -> tuple[list[Stored], list[str]]:
        """The image's segmentation documents, and the listed ids that are not ObjectIds."""
        items, bad = checked_listing(self.source.segmentations(image_id))
        docs = [self.source.segmentation(item["_id"]) for item in items]
        stored = self.store_docs("segmentation", docs)
        if len(stored) < len(docs):  # a malformed detail failed: check this image again
            bad = [*bad, f"({len(docs) - len(stored)} malformed)"]
        return stored, bad

    # -- studies and annotations ------------------------------------------------------------

    def sync_studies(self, only: str | None) -> list[dict]:
        """Every study (or the one named ``only``), recorded; returns their documents."""
        docs = self.source.studies()
        if only is not None:
            docs = [d for d in docs if only in (d.get("name"), d["_id"])]
        self.record("study", self.store_docs("study", docs))
        if only is None:
            self.remove_missing("study", {d["_id"] for d in docs})
        self.commit()
        return docs

    def sync_annotations(self, studies: list[dict], markups: bool) -> None:
        """Re-list every study's annotations (one request each) and compare hashes.

        A study whose listing hashes as its last complete one has nothing new: its markups
        are not looked at. Otherwise changed annotations are recorded, those the study no
        longer lists are marked removed, and markups are fetched for annotations whose marks
        or submission changed.
        """
        for study in studies:
            try:
                docs, bad = checked_listing(self.source.annotations(study["_id"]))
                stored = self.store_docs("annotation", docs)
            except Exception as exc:  # noqa: BLE001
                self.summary.fail("annotation", study["_id"], "json", exc)
                continue
            for shown in bad:
                self.summary.fail("annotation", shown, "listing",
                                  f"not an ObjectId (listed for study {study['_id']}); skipped")
            digest = hashlib.sha256("".join(sorted(
                f"{doc['_id']}{info.sha256}" for doc, info in stored)).encode()).hexdigest()
            row = self.session.get(Listing, ANNOTATION_KEY + study["_id"])
            if row is not None and row.digest == digest and not bad:
                self.summary.count("annotation", "unchanged", len(stored))
                continue
            unchanged = self._unchanged_markups(stored)
            self.record("annotation", stored)
            complete = not bad
            if complete:
                complete = self._remove_stale_annotations(study["_id"],
                                                          {d["_id"] for d, _ in stored})
            if markups:
                values, fetched = self._sync_markups([d for d, _ in stored], unchanged)
                complete = complete and fetched
                if fetched:
                    self._store_study_markups(study["_id"], values)
            if complete:  # else the next run looks at this study's annotations again
                self.session.merge(Listing(key=ANNOTATION_KEY + study["_id"], digest=digest,
                                           count=len(docs), fetched_at=checked_at()))
            self.commit()

    def _remove_stale_annotations(self, study_id: str, listed: set[str]) -> bool:
        old = set(self.session.scalars(select(Annotation.id).where(
            Annotation.study_id == study_id, Annotation.removed.is_(False))))
        if not old - listed:
            return True
        try:
            self.remove_missing("annotation", listed, within=old,
                                where=f"the annotation listing of study {study_id}")
        except RemovalGuardError as exc:  # suspect list: keep them, ask again next run
            self.summary.fail("annotation", study_id, "listing", exc)
            return False
        return True

    def _unchanged_markups(self, stored: list[Stored]) -> dict[str, str]:
        """Markup files still valid: same features marked, same submission (``stopTime``).

        Other changes to an annotation document (its image's name or ``updated``, say)
        leave the superpixel values alone, so they are not fetched again.
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



def recheck_period() -> int:
    """``MIRROR_RECHECK_PERIOD`` as a whole number of runs (and days), at least 1."""
    period = settings.RECHECK_PERIOD.get()
    if period < 1 or period != int(period):
        raise MirrorError(f"MIRROR_RECHECK_PERIOD={period:g} must be a whole number of at "
                          "least 1 (runs and days; default 7)")
    return int(period)
