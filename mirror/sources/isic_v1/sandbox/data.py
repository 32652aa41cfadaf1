"""Deterministic synthetic ISIC records, generated lazily from a seed.

Nothing is precomputed per image: image ``i``'s id, name, dates, metadata and
children are pure functions of ``(seed, i)``, so ``--images 100000`` costs no
memory up front. Ids are ObjectId-like (4-byte timestamp, 5 bytes derived from
the seed, 3-byte counter), so their *last* hex digit is evenly spread and an id
can be mapped back to its image number in O(1).

Realism comes from the real archive: clinical metadata, unstructured fields,
tags and dataset summaries are sampled from real records recorded from the v1 API
in 2019 (``templates.json.gz``: every 12th public image, ids and dates dropped).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import math
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources

START = 1388534400  # 2014-01-01
SPAN = 7 * 365 * 86400  # to the end of 2020
WIDTHS = (600, 640, 1022, 1024, 1504, 2000)
SUPERPIXELS = 1000
USERS = [{"_id": f"5450e996bae47865794e4d{n:02x}", "name": f"User {name}"}
         for n, name in enumerate(("6VSN", "Q3ZK", "M7TB", "HX2P", "W9DA"))]
# Ids of the archive's masterFeatures.json (isic_archive/models/), the only feature ids a
# study may hold: isicarchive looks each one up in its copy of that list.
FEATURES = [
    "Globules / Clods : Regular", "Globules / Clods : Irregular",
    "Lines : Typical pigment network / Reticulation",
    "Lines : Angulated lines / Polygons / Zig-zag pattern",
    "Structureless : Blue-whitish veil", "Dots : Regular", "Dots : Irregular",
    "Pattern : Starburst", "Vessels : Dotted", "Regression structures : Scarlike depigmentation",
    "Shiny white structures : Rosettes", "Lines : Branched streaks",
]
QUESTIONS = [
    {"choices": ["benign", "malignant", "indeterminate"], "id": "Diagnosis", "type": "select"},
    {"choices": ["none", "some", "many"], "id": "Amount of pigment network", "type": "select"},
]
PRIVATE_DATASETS = [
    {"_accessLevel": 0, "_id": "5b0e1a7f1165976c0a1f0001", "description": "Private lab collection.",
     "license": "CC-BY-NC", "name": "Private Collection A", "updated": "2018-05-30T10:12:15+00:00"},
    {"_accessLevel": 0, "_id": "5b0e1a7f1165976c0a1f0002", "description": "Private study cohort.",
     "license": "CC-BY", "name": "Private Collection B",
     "updated": "2018-05-30T10:14:02.117000+00:00"},
]


def iso(ts: float) -> str:
    """Girder's date format: microseconds ending in 000, the fraction dropped when zero."""
    ms = int(round(ts * 1000))
    text = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}000"
    return text + "+00:00"


@lru_cache(maxsize=1)
def templates() -> dict:
    folder = resources.files("mirror.sources.isic_v1.sandbox")
    raw = folder.joinpath("templates.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass
class ImageState:
    """Mutations applied to one image since start (the archive can change while it runs).

    ``updated`` and ``revision`` are the old, convenient change (``mutate(update=...)``):
    a later ``updated`` and a different age. The others are how the real archive changes
    an image, none of which touches ``updated`` (Girder's ``Item.save``): ``clinical``
    and ``tags`` (``applyMetadata``, a tag), ``name`` (``renameImage``), ``reviewed``
    (a QC review); segmentations saved on themselves only (``added`` segmentation
    documents, ``reviews`` appended to existing ones by position).
    """

    updated: float | None = None
    revision: int = 0
    clinical: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    name: str | None = None
    reviewed: dict | None = None
    added: list[dict] = field(default_factory=list)
    reviews: dict[int, list[dict]] = field(default_factory=dict)


@dataclass(eq=False)  # hashed by identity: blob caches are keyed on the archive
class Archive:
    """The whole synthetic archive: images 0..count-1 minus removals, plus overrides."""

    count: int
    seed: int = 0
    private_fraction: float = 0.1
    removed: set[int] = field(default_factory=set)
    changed: dict[int, ImageState] = field(default_factory=dict)
    last_silent: float = 0.0  # the time of the latest change_silently
    added_segmentations: dict[str, int] = field(default_factory=dict)  # id -> image
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        seed_hash = hashlib.sha256(f"isic-sandbox:{self.seed}".encode()).digest()
        self.machine = seed_hash[:5].hex()
        self.seg_machine = seed_hash[5:10].hex()
        self.ann_machine = seed_hash[10:15].hex()
        self.counter_base = int.from_bytes(seed_hash[15:18], "big")
        self.step = max(1, SPAN // max(self.count, 1))

    # -- images ----------------------------------------------------------------------------

    def image_ts(self, i: int) -> int:
        return START + i * self.step

    def image_id(self, i: int) -> str:
        counter = (self.counter_base + i) & 0xFFFFFF
        return f"{self.image_ts(i):08x}{self.machine}{counter:06x}"

    def image_index(self, image_id: str) -> int | None:
        """Image number of an id, or None when it is not one of ours (or removed)."""
        if len(image_id) != 24 or image_id[8:18] != self.machine:
            return None
        i = (int(image_id[18:], 16) - self.counter_base) & 0xFFFFFF
        with self.lock:
            ok = i < self.count and i not in self.removed and self.image_id(i) == image_id
        return i if ok else None

    def listed(self) -> list[int]:
        with self.lock:
            return [i for i in range(self.count) if i not in self.removed]

    def sort_key(self, i: int, field: str) -> int:
        """Generated images sort the same by _id, name and created: by number."""
        return i

    def datasets(self) -> list[dict]:
        """Public dataset summaries, by name."""
        return sorted(templates()["datasets"].values(), key=lambda d: d["name"])

    def is_private(self, i: int) -> bool:
        return self.private_fraction > 0 and \
            _rng(self.seed, "private", i).random() < self.private_fraction

    def private_datasets(self) -> list[dict]:
        """Datasets only a logged-in caller sees."""
        return PRIVATE_DATASETS

    def dataset_attribution(self, summary: dict) -> str:
        """A dataset detail's ``attribution``: the one its summary carries, else
        "Anonymous", the value ISIC credits the MSK datasets with."""
        return summary.get("attribution") or "Anonymous"

    def image_template(self, i: int) -> dict:
        pool = templates()["images"]
        return pool[_rng(self.seed, "template", i).randrange(len(pool))]

    def dataset_summary(self, i: int) -> dict:
        if self.is_private(i):
            return PRIVATE_DATASETS[i % len(PRIVATE_DATASETS)]
        return templates()["datasets"][self.image_template(i)["dataset"]]

    def image_size(self, i: int) -> tuple[int, int]:
        rng = _rng(self.seed, "size", i)
        acquisition = self.image_template(i)["meta"]["acquisition"]
        tx, ty = acquisition.get("pixelsX") or 4, acquisition.get("pixelsY") or 3
        width = rng.choice(WIDTHS)
        return width, max(1, round(width * ty / tx))

    def image_dates(self, i: int) -> tuple[str, str]:
        rng = _rng(self.seed, "dates", i)
        created = self.image_ts(i) + rng.randrange(0, 1000) / 1000  # 0.1 % drop the fraction
        updated = created + rng.randrange(60, 400 * 86400) + rng.randrange(0, 1000) / 1000
        state = self.changed.get(i)
        if state and state.updated:
            updated = state.updated
        return iso(created), iso(updated)

    def image_name(self, i: int) -> str:
        state = self.changed.get(i)
        return state.name if state and state.name else f"ISIC_{i:07d}"

    def image_summary(self, i: int) -> dict:
        return {"_id": self.image_id(i), "name": self.image_name(i),
                "updated": self.image_dates(i)[1]}

    def apply_changes(self, i: int, doc: dict) -> dict:
        """``doc`` with the changes made to image ``i`` that leave ``updated`` alone."""
        state = self.changed.get(i)
        if state is None:
            return doc
        if state.name:
            doc["name"] = state.name
        if state.clinical:
            doc.setdefault("meta", {}).setdefault("clinical", {}).update(state.clinical)
        notes = doc.setdefault("notes", {})
        if state.tags:
            notes["tags"] = list(notes.get("tags") or []) + [
                t for t in state.tags if t not in (notes.get("tags") or [])]
        if state.reviewed:
            notes["reviewed"] = dict(state.reviewed)
        return doc

    def image_detail(self, i: int) -> dict:
        template = self.image_template(i)
        rng = _rng(self.seed, "detail", i)
        created, updated = self.image_dates(i)
        meta = copy.deepcopy(template["meta"])
        width, height = self.image_size(i)
        meta["acquisition"]["pixelsX"], meta["acquisition"]["pixelsY"] = width, height
        state = self.changed.get(i)
        if state and state.revision and isinstance(meta["clinical"].get("age_approx"), int):
            meta["clinical"]["age_approx"] += 5 * state.revision  # a visible metadata change
        return self.apply_changes(i, {
            "_id": self.image_id(i), "_modelType": "image", "created": created,
            "creator": USERS[rng.randrange(len(USERS))], "dataset": self.dataset_summary(i),
            "meta": meta, "name": f"ISIC_{i:07d}",
            "notes": {"reviewed": {"accepted": True, "time": created,
                                   "userId": USERS[0]["_id"]},
                      "tags": list(template["tags"])},
            "updated": updated,
        })

    # -- mutations ---------------------------------------------------------------------------

    def mutate(self, add: int = 0, update: int = 0, remove: int = 0,
               update_ids: list[str] | None = None, remove_ids: list[str] | None = None,
               **silent) -> dict:
        """Change the archive while it runs.

        ``add``, ``update`` (a later ``updated`` and a new age), ``remove``: counts of
        random images, or ``update_ids``/``remove_ids``. The keywords of
        :meth:`change_silently` change images and segmentations the way the real archive
        does, without touching ``updated``.
        """
        with self.lock:
            out = self._mutate(add, update, remove, update_ids, remove_ids)
            if silent:
                out.update(self.change_silently(**silent))
            return out

    def _mutate(self, add: int, update: int, remove: int, update_ids: list[str] | None,
                remove_ids: list[str] | None) -> dict:
        rng = _rng(self.seed, "mutate", self.count, len(self.removed), len(self.changed))
        live = self.listed()
        to_update = [self.image_index(x) for x in update_ids or []]
        to_update += rng.sample(live, min(update, len(live)))
        to_remove = [self.image_index(x) for x in remove_ids or []]
        rest = [i for i in live if i not in to_update]
        to_remove += rng.sample(rest, min(remove, len(rest)))
        latest = self.latest_change()
        for n, i in enumerate(i for i in to_update if i is not None):
            state = self.changed.setdefault(i, ImageState())
            state.updated, state.revision = latest + 60 * (n + 1) + 0.25, state.revision + 1
        self.removed.update(i for i in to_remove if i is not None)
        added = list(range(self.count, self.count + add))
        self.count += add
        return {"added": [self.image_id(i) for i in added],
                "updated": [self.image_id(i) for i in to_update if i is not None],
                "removed": [self.image_id(i) for i in to_remove if i is not None]}

    def latest_change(self) -> float:
        """A time after every date the archive shows, for the next change."""
        return max([START + SPAN, self.last_silent]
                   + [s.updated or 0 for s in self.changed.values()])

    SILENT = ("metadata", "tags", "renames", "reviews", "segment", "review_segmentations")

    def change_silently(self, metadata: dict[str, dict] | None = None,
                        tags: dict[str, str] | None = None,
                        renames: dict[str, str] | None = None,
                        reviews: list[str] | None = None, segment: list[str] | None = None,
                        review_segmentations: list[str] | None = None) -> dict:
        """Changes the real archive makes without touching any image's ``updated``.

        ``metadata``: ``{image id: {clinical field: value}}`` (``applyMetadata``);
        ``tags``: ``{image id: tag}`` added to ``notes.tags``; ``renames``: ``{image id:
        new name}`` (``renameImage``); ``reviews``: image ids given a new QC review
        (``notes.reviewed``); ``segment``: image ids given one more segmentation
        (``createSegmentation``: the image is not saved); ``review_segmentations``:
        segmentation ids given one more (expert) review. Returns the ids touched, and the
        new segmentations' ids as ``segmented``.
        """
        with self.lock:
            stamp = self.latest_change() + 1.5
            touched: set[str] = set()

            def state_of(image_id: str) -> ImageState:
                i = self.image_index(image_id)
                if i is None:
                    raise ValueError(f"no image {image_id}")
                touched.add(image_id)
                return self.changed.setdefault(i, ImageState())

            for image_id, fields in (metadata or {}).items():
                state_of(image_id).clinical.update(fields)
            for image_id, tag in (tags or {}).items():
                state_of(image_id).tags.append(tag)
            for image_id, name in (renames or {}).items():
                state_of(image_id).name = name
            for image_id in reviews or []:
                state_of(image_id).reviewed = {"accepted": True, "time": iso(stamp),
                                               "userId": USERS[4]["_id"]}
            segmented = [self._add_segmentation(image_id, stamp + n)
                         for n, image_id in enumerate(segment or [])]
            for n, seg_id in enumerate(review_segmentations or []):
                found = self.segmentation_index(seg_id)
                if found is None:
                    raise ValueError(f"no segmentation {seg_id}")
                i, j = found
                review = {"approved": True, "skill": "expert", "time": iso(stamp + n),
                          "userId": USERS[2]["_id"]}
                state = self.changed.setdefault(i, ImageState())
                base = self.segmentation_count(i) - len(state.added)
                if j >= base:
                    state.added[j - base]["reviews"].append(review)
                else:
                    state.reviews.setdefault(j, []).append(review)
            self.last_silent = stamp + len(segmented) + len(review_segmentations or [])
            return {"changed": sorted(touched), "segmented": segmented,
                    "reviewed_segmentations": list(review_segmentations or [])}

    def _add_segmentation(self, image_id: str, when: float) -> str:
        i = self.image_index(image_id)
        if i is None:
            raise ValueError(f"no image {image_id}")
        state = self.changed.setdefault(i, ImageState())
        serial = len(self.added_segmentations) + 1
        seg_id = f"{int(when):08x}{self.seg_machine[:8]}ad{serial:06x}"
        state.added.append({
            "_id": seg_id, "created": iso(when), "creator": USERS[1], "failed": False,
            "imageId": image_id,
            "meta": {"source": "autofill", "startTime": iso(when - 90),
                     "stopTime": iso(when - 30)},
            "reviews": [{"approved": True, "skill": "novice", "time": iso(when),
                         "userId": USERS[1]["_id"]}]})
        self.added_segmentations[seg_id] = i
        return seg_id

    def added_segmentation(self, seg_id: str) -> tuple[int, int] | None:
        """(image, position) of a segmentation added by :meth:`change_silently`."""
        i = self.added_segmentations.get(seg_id)
        if i is None or i in self.removed:
            return None
        state = self.changed[i]
        base = self.segmentation_count(i) - len(state.added)
        position = next(n for n, d in enumerate(state.added) if d["_id"] == seg_id)
        return i, base + position

    def added_count(self, i: int) -> int:
        state = self.changed.get(i)
        return len(state.added) if state else 0

    def changed_segmentation(self, i: int, j: int, detail: dict) -> dict:
        """``detail`` (of base segmentation ``j``) with the reviews added since start."""
        state = self.changed.get(i)
        if state and state.reviews.get(j):
            detail["reviews"] = list(detail["reviews"]) + [dict(r) for r in state.reviews[j]]
        return detail

    # -- segmentations -----------------------------------------------------------------------

    def segmentation_count(self, i: int) -> int:
        return self.base_segmentation_count(i) + self.added_count(i)

    def base_segmentation_count(self, i: int) -> int:
        roll = _rng(self.seed, "nseg", i).random()
        return 1 if roll < 0.84 else 2 if roll < 0.99 else 3

    def added_detail(self, i: int, j: int) -> dict | None:
        """The document of segmentation ``j`` of image ``i`` when it was added, else None."""
        extra = j - (self.segmentation_count(i) - self.added_count(i))
        return copy.deepcopy(self.changed[i].added[extra]) if extra >= 0 else None

    def segmentation_id(self, i: int, j: int) -> str:
        added = self.added_detail(i, j)
        if added is not None:
            return added["_id"]
        counter = (i * 4 + j) & 0xFFFFFF
        return f"{self.image_ts(i) + 86400 + j:08x}{self.seg_machine}{counter:06x}"

    def segmentation_index(self, seg_id: str) -> tuple[int, int] | None:
        added = self.added_segmentation(seg_id)
        if added is not None:
            return added
        if len(seg_id) != 24 or seg_id[8:18] != self.seg_machine:
            return None
        counter = int(seg_id[18:], 16)
        i, j = counter // 4, counter % 4
        if self.image_index(self.image_id(i)) is None or j >= self.base_segmentation_count(i):
            return None
        return (i, j) if self.segmentation_id(i, j) == seg_id else None

    def segmentation_failed(self, i: int, j: int) -> bool:
        if self.added_detail(i, j) is not None:
            return False
        return j > 0 and _rng(self.seed, "failed", i, j).random() < 0.2

    def segmentation_detail(self, i: int, j: int) -> dict:
        added = self.added_detail(i, j)
        if added is not None:
            return added
        rng = _rng(self.seed, "seg", i, j)
        created = self.image_ts(i) + 86400 + j + rng.randrange(0, 1000) / 1000
        failed = self.segmentation_failed(i, j)
        reviews = [{"approved": True, "skill": "novice", "time": iso(created),
                    "userId": USERS[1]["_id"]}]
        if rng.random() < 0.25:
            reviews.append({"approved": rng.random() < 0.9, "skill": "expert",
                            "time": iso(created + rng.randrange(3600, 90 * 86400)),
                            "userId": USERS[2]["_id"]})
        return self.changed_segmentation(i, j, {
            "_id": self.segmentation_id(i, j), "created": iso(created),
            "creator": USERS[1], "failed": failed, "imageId": self.image_id(i),
            "meta": {"flagged": "could not segment"} if failed else
            self._segmentation_meta(rng, created), "reviews": reviews})

    @staticmethod
    def _segmentation_meta(rng: random.Random, created: float) -> dict:
        pool = templates()["segmentation_meta"]
        meta = copy.deepcopy(pool[rng.randrange(len(pool))])
        start = created - rng.randrange(60, 600)
        for key, ts in (("startTime", start), ("stopTime", start + rng.randrange(10, 120))):
            if key in meta:  # keep the 1-element-list quirk where the template has it
                meta[key] = [iso(ts)] if isinstance(meta[key], list) else iso(ts)
        return meta

    def segmentation_summary(self, i: int, j: int) -> dict:
        detail = self.segmentation_detail(i, j)
        expert = any(r["skill"] == "expert" for r in detail["reviews"])
        return {"_id": detail["_id"], "created": detail["created"], "failed": detail["failed"],
                "skill": "expert" if expert else "novice"}

    # -- superpixels ---------------------------------------------------------------------------

    def superpixel_grid(self, i: int) -> tuple[int, int]:
        """Columns and rows of the superpixel grid: about 1,000 near-square cells."""
        width, height = self.image_size(i)
        nx = max(1, round(math.sqrt(SUPERPIXELS * width / height)))
        ny = max(1, round(SUPERPIXELS / nx))
        return min(nx, width), min(ny, height)

    def superpixel_count(self, i: int) -> int:
        nx, ny = self.superpixel_grid(i)
        return nx * ny

    # -- studies and annotations -------------------------------------------------------------

    STUDY_NAMES = ("ISIC Annotation Study - All Features", "Globules and Dots Study",
                   "Private Vessels Study")

    def study_ids(self) -> list[str]:
        return [self.study_id(k) for k in range(len(self.STUDY_NAMES))] if self.count else []

    def study_id(self, k: int) -> str:
        return f"{START + SPAN // 2 + k * 86400:08x}{self.ann_machine}{0xF00000 + k:06x}"

    def study_index(self, study_id: str) -> int | None:
        ids = self.study_ids()
        return ids.index(study_id) if study_id in ids else None

    def study_public(self, k: int) -> bool:
        return k < 2

    def study_images(self, k: int) -> list[int]:
        """Up to 30 images; a public study holds public images only (an anonymous caller
        may read every image of a study it may read)."""
        public = self.study_public(k)
        picked: list[int] = []
        with self.lock:
            for i in range(k, self.count, 5 + k):
                if i not in self.removed and not (public and self.is_private(i)):
                    picked.append(i)
                    if len(picked) == 30:
                        break
        return picked

    def study_features(self, k: int) -> list[str]:
        return FEATURES if k == 0 else FEATURES[k * 3:k * 3 + 4]

    def study_users(self, k: int) -> list[dict]:
        return [USERS[3], USERS[4]]

    def study_detail(self, k: int) -> dict:
        ts = START + SPAN // 2 + k * 86400
        images = self.study_images(k)
        annotations = [self.annotation_detail(k, pos, u)
                       for pos in range(len(images)) for u in range(2)]
        completion = {user["_id"]: sum(1 for a in annotations if a["state"] == "complete"
                                       and a["user"]["_id"] == user["_id"])
                      for user in self.study_users(k)}
        latest = max([iso(ts + 3600)] + [self.image_summary(i)["updated"] for i in images])
        return {
            "_id": self.study_id(k), "_modelType": "study", "created": iso(ts),
            "creator": USERS[0], "description": f"Synthetic study {k + 1}.",
            "features": [{"id": f} for f in self.study_features(k)],
            "images": sorted((self.image_summary(i) for i in images), key=lambda s: s["name"]),
            "name": self.STUDY_NAMES[k], "questions": copy.deepcopy(QUESTIONS),
            "updated": latest, "userCompletion": completion,
            "users": sorted(self.study_users(k), key=lambda u: u["name"]),
        }

    def study_summary(self, k: int) -> dict:
        detail = self.study_detail(k)
        return {key: detail[key] for key in ("_id", "description", "name", "updated")}

    def annotation_id(self, k: int, pos: int, u: int) -> str:
        ts = START + SPAN // 2 + k * 86400 + 3600 + pos
        return f"{ts:08x}{self.ann_machine}{(k << 20) | (pos << 2) | u:06x}"

    def annotation_index(self, annotation_id: str) -> tuple[int, int, int] | None:
        if len(annotation_id) != 24 or annotation_id[8:18] != self.ann_machine:
            return None
        counter = int(annotation_id[18:], 16)
        k, pos, u = counter >> 20, (counter >> 2) & 0x3FFFF, counter & 3
        if k >= len(self.study_ids()) or u > 1 or pos >= len(self.study_images(k)):
            return None
        return (k, pos, u) if self.annotation_id(k, pos, u) == annotation_id else None

    def annotation_detail(self, k: int, pos: int, u: int) -> dict:
        i = self.study_images(k)[pos]
        rng = _rng(self.seed, "annotation", k, pos, u)
        complete = rng.random() < 0.85
        user = self.study_users(k)[u]
        doc = {"_id": self.annotation_id(k, pos, u), "_modelType": "annotation",
               "image": self.image_summary(i), "state": "complete" if complete else "active",
               "studyId": self.study_id(k), "user": user}
        if complete:
            start = START + SPAN // 2 + k * 86400 + 7200 + pos * 600
            doc.update({
                "log": [], "startTime": iso(start), "stopTime": iso(start + rng.randrange(30, 600)),
                "status": "ok",
                "responses": {q["id"]: rng.choice(q["choices"]) for q in QUESTIONS},
                "markups": {f: rng.random() < 0.35 for f in self.study_features(k)},
            })
        return doc

    def annotation_summary(self, k: int, pos: int, u: int) -> dict:
        d = self.annotation_detail(k, pos, u)
        return {"_id": d["_id"], "imageId": d["image"]["_id"], "state": d["state"],
                "studyId": d["studyId"], "userId": d["user"]["_id"]}

    def markup_values(self, k: int, pos: int, u: int, feature: str) -> list[float]:
        """One value per superpixel: 1.0 definite, 0.5 possible, 0.0 absent."""
        i = self.study_images(k)[pos]
        values = [0.0] * self.superpixel_count(i)
        detail = self.annotation_detail(k, pos, u)
        if not (detail.get("markups") or {}).get(feature):
            return values
        nx, ny = self.superpixel_grid(i)
        rng = _rng(self.seed, "markup", k, pos, u, feature)
        cx, cy = rng.randrange(nx), rng.randrange(ny)
        for y in range(max(0, cy - 2), min(ny, cy + 3)):
            for x in range(max(0, cx - 2), min(nx, cx + 3)):
                near = abs(x - cx) <= 1 and abs(y - cy) <= 1
                values[y * nx + x] = 1.0 if near else 0.5
        return values
