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
FEATURES = [
    "Globules / Clods : Regular", "Globules / Clods : Irregular",
    "Lines : Reticular : Pigment network : Typical",
    "Lines : Angulated lines / Polygons / Zig-zag pattern",
    "Structureless : Blue-whitish veil", "Dots : Regular", "Dots : Irregular",
    "Pattern : Symmetry (1 axis / 2 axes)", "Vessels : Dotted", "Regression structures : Scar-like",
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
    """Mutations applied to one image since start (the archive can change while it runs)."""

    updated: float | None = None
    revision: int = 0


@dataclass(eq=False)  # hashed by identity: blob caches are keyed on the archive
class Archive:
    """The whole synthetic archive: images 0..count-1 minus removals, plus overrides."""

    count: int
    seed: int = 0
    private_fraction: float = 0.1
    removed: set[int] = field(default_factory=set)
    changed: dict[int, ImageState] = field(default_factory=dict)
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
        return _rng(self.seed, "private", i).random() < self.private_fraction

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

    def image_summary(self, i: int) -> dict:
        return {"_id": self.image_id(i), "name": f"ISIC_{i:07d}", "updated": self.image_dates(i)[1]}

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
        return {
            "_id": self.image_id(i), "_modelType": "image", "created": created,
            "creator": USERS[rng.randrange(len(USERS))], "dataset": self.dataset_summary(i),
            "meta": meta, "name": f"ISIC_{i:07d}",
            "notes": {"reviewed": {"accepted": True, "time": created,
                                   "userId": USERS[0]["_id"]},
                      "tags": list(template["tags"])},
            "updated": updated,
        }

    # -- mutations ---------------------------------------------------------------------------

    def mutate(self, add: int = 0, update: int = 0, remove: int = 0,
               update_ids: list[str] | None = None, remove_ids: list[str] | None = None) -> dict:
        with self.lock:
            rng = _rng(self.seed, "mutate", self.count, len(self.removed), len(self.changed))
            live = self.listed()
            to_update = [self.image_index(x) for x in update_ids or []]
            to_update += rng.sample(live, min(update, len(live)))
            to_remove = [self.image_index(x) for x in remove_ids or []]
            rest = [i for i in live if i not in to_update]
            to_remove += rng.sample(rest, min(remove, len(rest)))
            latest = max([START + SPAN] + [s.updated or 0 for s in self.changed.values()])
            for n, i in enumerate(i for i in to_update if i is not None):
                state = self.changed.setdefault(i, ImageState())
                state.updated, state.revision = latest + 60 * (n + 1) + 0.25, state.revision + 1
            self.removed.update(i for i in to_remove if i is not None)
            added = list(range(self.count, self.count + add))
            self.count += add
            return {"added": [self.image_id(i) for i in added],
                    "updated": [self.image_id(i) for i in to_update if i is not None],
                    "removed": [self.image_id(i) for i in to_remove if i is not None]}

    # -- segmentations -----------------------------------------------------------------------

    def segmentation_count(self, i: int) -> int:
        roll = _rng(self.seed, "nseg", i).random()
        return 1 if roll < 0.84 else 2 if roll < 0.99 else 3

    def segmentation_id(self, i: int, j: int) -> str:
        counter = (i * 4 + j) & 0xFFFFFF
        return f"{self.image_ts(i) + 86400 + j:08x}{self.seg_machine}{counter:06x}"

    def segmentation_index(self, seg_id: str) -> tuple[int, int] | None:
        if len(seg_id) != 24 or seg_id[8:18] != self.seg_machine:
            return None
        counter = int(seg_id[18:], 16)
        i, j = counter // 4, counter % 4
        if self.image_index(self.image_id(i)) is None or j >= self.segmentation_count(i):
            return None
        return (i, j) if self.segmentation_id(i, j) == seg_id else None

    def segmentation_failed(self, i: int, j: int) -> bool:
        return j > 0 and _rng(self.seed, "failed", i, j).random() < 0.2

    def segmentation_detail(self, i: int, j: int) -> dict:
        rng = _rng(self.seed, "seg", i, j)
        created = self.image_ts(i) + 86400 + j + rng.randrange(0, 1000) / 1000
        failed = self.segmentation_failed(i, j)
        reviews = [{"approved": True, "skill": "novice", "time": iso(created),
                    "userId": USERS[1]["_id"]}]
        if rng.random() < 0.25:
            reviews.append({"approved": rng.random() < 0.9, "skill": "expert",
                            "time": iso(created + rng.randrange(3600, 90 * 86400)),
                            "userId": USERS[2]["_id"]})
        return {"_id": self.segmentation_id(i, j), "created": iso(created),
                "creator": USERS[1], "failed": failed, "imageId": self.image_id(i),
                "meta": {"flagged": "could not segment"} if failed else
                self._segmentation_meta(rng, created), "reviews": reviews}

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
        with self.lock:
            picked = [i for i in range(k, self.count, 5 + k) if i not in self.removed]
        return picked[:30]

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
