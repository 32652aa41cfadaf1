"""Serve recorded image (and segmentation) records instead of generated ones.

``--records FILE`` takes the format the isicarchive package caches and our research
recorded: a JSON object, optionally gzipped, mapping ``_id`` to the full image detail
document. ``--segmentations FILE`` does the same for segmentation details. Files are
synthetic, sized to each record's ``pixelsX``/``pixelsY`` and named after its ``name``;
studies stay synthetic over the recorded images (public ones only). Logging in adds
nothing: a recording is what one caller saw, so there are no private datasets, images or
studies to reveal. A dataset keeps the ``attribution`` its recorded summary carries.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from mirror.sources.isic_v1.sandbox.data import Archive, iso


def _load(path: str | Path) -> dict[str, dict]:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object mapping _id to a document")
    return data


class RecordArchive(Archive):
    """An :class:`Archive` whose images (and segmentations) are recorded documents."""

    def __init__(self, records: dict[str, dict], segmentations: dict[str, dict] | None,
                 seed: int = 0):
        self.records = records
        self.ids = sorted(records)
        self.position = {image_id: i for i, image_id in enumerate(self.ids)}
        self.segs_of: dict[str, list[dict]] | None = None
        if segmentations is not None:
            self.segs_of = defaultdict(list)
            for seg in segmentations.values():
                self.segs_of[seg.get("imageId")].append(seg)
            for segs in self.segs_of.values():
                segs.sort(key=lambda s: s["_id"])
            self.seg_position = {s["_id"]: (self.position[img], j)
                                 for img, segs in self.segs_of.items() if img in self.position
                                 for j, s in enumerate(segs)}
        super().__init__(len(self.ids), seed=seed, private_fraction=0.0)

    @classmethod
    def load(cls, records: str | Path, segmentations: str | Path | None = None,
             seed: int = 0) -> RecordArchive:
        return cls(_load(records), _load(segmentations) if segmentations else None, seed)

    # -- images -------------------------------------------------------------------------------

    def image_id(self, i: int) -> str:
        return self.ids[i]

    def image_index(self, image_id: str) -> int | None:
        i = self.position.get(image_id)
        return None if i is None or i in self.removed else i

    def sort_key(self, i: int, field: str) -> str:
        return str(self.records[self.ids[i]].get(field, ""))

    def is_private(self, i: int) -> bool:
        return False

    def private_datasets(self) -> list[dict]:
        return []

    def study_ids(self) -> list[str]:
        return [x for k, x in enumerate(super().study_ids()) if Archive.study_public(self, k)]

    def dataset_summary(self, i: int) -> dict:
        return self.records[self.ids[i]].get("dataset") or {}

    def datasets(self) -> list[dict]:
        unique = {d["_id"]: d for d in map(self.dataset_summary, range(self.count)) if d}
        return sorted(unique.values(), key=lambda d: d.get("name", ""))

    def image_size(self, i: int) -> tuple[int, int]:
        acquisition = (self.records[self.ids[i]].get("meta") or {}).get("acquisition") or {}
        return int(acquisition.get("pixelsX") or 1024), int(acquisition.get("pixelsY") or 768)

    def image_detail(self, i: int) -> dict:
        doc = json.loads(json.dumps(self.records[self.ids[i]]))
        state = self.changed.get(i)
        if state and state.updated:
            doc["updated"] = self.image_dates(i)[1]
        return self.apply_changes(i, doc)

    def image_name(self, i: int) -> str:
        state = self.changed.get(i)
        return state.name if state and state.name else self.records[self.ids[i]].get("name")

    def image_dates(self, i: int) -> tuple[str, str]:
        doc = self.records[self.ids[i]]
        created, updated = doc.get("created", ""), doc.get("updated", "")
        state = self.changed.get(i)
        if state and state.updated:
            updated = iso(state.updated)
        return created, updated

    def image_summary(self, i: int) -> dict:
        return {"_id": self.ids[i], "name": self.image_name(i),
                "updated": self.image_dates(i)[1]}

    def mutate(self, add: int = 0, **changes) -> dict:
        if add:
            raise ValueError("adding images is not supported when serving recorded records")
        return super().mutate(**changes)

    # -- segmentations --------------------------------------------------------------------------

    def _recorded(self, i: int) -> list[dict]:
        return self.segs_of.get(self.ids[i], []) if self.segs_of is not None else []

    def base_segmentation_count(self, i: int) -> int:
        if self.segs_of is None:
            return super().base_segmentation_count(i)
        return len(self._recorded(i))

    def segmentation_id(self, i: int, j: int) -> str:
        if self.segs_of is None or j >= len(self._recorded(i)):
            return super().segmentation_id(i, j)
        return self._recorded(i)[j]["_id"]

    def segmentation_index(self, seg_id: str) -> tuple[int, int] | None:
        added = self.added_segmentation(seg_id)
        if added is not None or self.segs_of is None:
            return added or super().segmentation_index(seg_id)
        found = self.seg_position.get(seg_id)
        return found if found and found[0] not in self.removed else None

    def segmentation_failed(self, i: int, j: int) -> bool:
        if self.segs_of is None or j >= len(self._recorded(i)):
            return super().segmentation_failed(i, j)
        return bool(self._recorded(i)[j].get("failed"))

    def segmentation_detail(self, i: int, j: int) -> dict:
        if self.segs_of is None or j >= len(self._recorded(i)):
            return super().segmentation_detail(i, j)
        # "skill" in recordings was added by the isicarchive cache, not served by the API.
        detail = {k: v for k, v in self._recorded(i)[j].items() if k != "skill"}
        return self.changed_segmentation(i, j, json.loads(json.dumps(detail)))
