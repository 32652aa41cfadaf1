"""ISIC v1 in snapshots: what a snapshot pins, what its files are called in an export,
and the tables made from the pinned documents (``metadata.csv``, ``attribution.txt``).

The generic snapshot code (:mod:`mirror.snapshots`) calls these hooks; everything here
reads only the manifest and the pinned bytes (or, when pinning, the published index).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mirror.export import cell, field_value
from mirror.snapshots.manifest import Snapshot, entry, files_of
from mirror.sources.isic_v1.models import Dataset, Image, Segmentation
from mirror.store import UnsafeNameError, safe_name

if TYPE_CHECKING:
    from mirror.snapshots.payload import Locator

FIXED_COLUMNS = ["isic_id", "image_id", "attribution", "copyright_license", "dataset"]
META_GROUPS = ("acquisition", "clinical")
FILE_SUFFIX = {"image": "", "thumbnail": "_thumbnail", "superpixels": "_superpixels"}
#: what ``mirror snapshot build`` syncs to fetch a manifest's objects again
BUILD_PARTS = frozenset({"images", "datasets", "segmentations"})


def build_options(snap: Snapshot) -> dict:
    """The sync options that fetch exactly what ``snap`` pins."""
    return {"what": BUILD_PARTS,
            "image_ids": frozenset(e["id"] for e in snap.of_kind("image"))}


def pinned_objects(conn, image_ids: list[str], roles: list[str]) -> list[dict]:
    """Manifest entries of the images, their datasets and segmentations, sorted."""
    objects: list[dict] = []
    dataset_ids: set[str] = set()
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start:start + 500]
        files = files_of(conn, chunk, roles)
        for image_id, name, sha, dataset_id, updated in conn.execute(
                select(Image.id, Image.name, Image.doc_sha256, Image.dataset_id, Image.updated)
                .where(Image.id.in_(chunk))):
            objects.append(entry(conn, "image", image_id, sha, name, updated,
                                  files.get(image_id, [])))
            dataset_ids.add(dataset_id)
        objects += _segmentations(conn, chunk, "mask" in roles)
    for ds_id, name, sha, updated in conn.execute(
            select(Dataset.id, Dataset.name, Dataset.doc_sha256, Dataset.updated)
            .where(Dataset.id.in_(sorted(d for d in dataset_ids if d)))):
        objects.append(entry(conn, "dataset", ds_id, sha, name, updated, []))
    return sorted(objects, key=lambda o: (o["kind"], o["id"]))


def _segmentations(conn, image_ids: list[str], masks: bool) -> list[dict]:
    rows = conn.execute(select(Segmentation.id, Segmentation.image_id, Segmentation.doc_sha256,
                               Segmentation.created)
                        .where(Segmentation.image_id.in_(image_ids),
                               Segmentation.removed.is_(False))).all()
    files = files_of(conn, [r[0] for r in rows], ["mask"]) if masks else {}
    out = []
    for seg_id, image_id, sha, created in rows:
        pinned = entry(conn, "segmentation", seg_id, sha, None, created, files.get(seg_id, []))
        pinned["image_id"] = image_id
        out.append(pinned)
    return out


def _file_name(entry: dict) -> str:
    """A safe file stem for an object: its name when that is safe, else its id."""
    try:
        return safe_name(entry.get("name") or "")
    except UnsafeNameError:
        return entry["id"]


def file_member_path(snap: Snapshot, entry: dict, file: dict) -> str:
    """Where a pinned file goes in an export."""
    if entry["kind"] == "segmentation":
        image = snap.by_key.get(("image", entry["image_id"]), {"id": entry["image_id"]})
        return f"masks/{_file_name(image)}_{entry['id']}{file['ext']}"
    return f"images/{_file_name(entry)}{FILE_SUFFIX[file['role']]}{file['ext']}"


def generated_files(snap: Snapshot, locator: Locator) -> list[tuple[str, bytes]]:
    """``metadata.csv`` and ``attribution.txt``, made from the pinned documents alone."""
    datasets = {e["id"]: json.loads(locator.document_bytes("dataset", e["id"],
                                                            e["document"]["sha256"]))
                for e in snap.of_kind("dataset")}
    images = snap.of_kind("image")

    def docs() -> Iterator[dict]:
        for e in sorted(images, key=lambda e: (e.get("name") or "", e["id"])):
            yield json.loads(locator.document_bytes("image", e["id"], e["document"]["sha256"]))

    keys, counts = _survey(docs())
    return [("metadata.csv", metadata_csv(docs(), datasets, keys)),
            ("attribution.txt", attribution(counts, datasets))]


def _survey(docs: Iterator[dict]) -> tuple[set[str], dict[Any, int]]:
    """One pass: every acquisition and clinical field present, and images per dataset."""
    keys: set[str] = set()
    counts: dict[Any, int] = {}
    for doc in docs:
        for group in META_GROUPS:
            keys |= {f"meta.{group}.{k}" for k in (field_value(doc, f"meta.{group}") or {})}
        dataset = field_value(doc, "dataset._id")
        counts[dataset] = counts.get(dataset, 0) + 1
    return keys, counts


def metadata_csv(docs: Iterator[dict], datasets: dict[str, dict], keys: set[str]) -> bytes:
    """One row per image; ``keys`` (from :func:`_survey`) are the meta columns."""
    columns = sorted(keys, key=lambda p: (p.split(".")[2], p))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIXED_COLUMNS + [c.split(".", 2)[2] for c in columns])
    for doc in docs:
        ds = datasets.get(field_value(doc, "dataset._id"), {})
        writer.writerow([cell(v) for v in [doc.get("name"), doc["_id"], ds.get("attribution"),
                                           ds.get("license"), ds.get("name")]] +
                        [cell(field_value(doc, c)) for c in columns])
    return buffer.getvalue().encode()


def attribution(counts: dict[Any, int], datasets: dict[str, dict]) -> bytes:
    lines = ["Images in this snapshot, by dataset (count, dataset, license, attribution):", ""]
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        ds = datasets.get(key, {})
        lines.append(f"{count}\t{ds.get('name', key)}\t{ds.get('license') or 'not recorded'}\t"
                     f"{ds.get('attribution') or 'Anonymous'}")
    return ("\n".join(lines) + "\n").encode()


