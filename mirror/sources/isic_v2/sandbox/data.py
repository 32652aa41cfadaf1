"""The sandbox's archive: images, cohorts, collections, lesions, two clocks, and mutations.

Everything is a pure function of the seed and of the mutations applied since start, so two
sandboxes with the same seed and the same ``mutate`` calls serve the same bytes.

It models the live archive as the research note ``isic_v2_api.md`` §7 describes it:

- every image has a hidden ``created`` (its publish time): the listing order and the only
  thing a cursor encodes;
- rows (listings, search results, detail, ``count``) come from the "database" and change at
  once; ``search/size/``, ``facets/`` and the lesion ``count`` come from an "Elasticsearch"
  copy re-indexed only at UTC midnight of the sandbox clock, which never drops a deleted
  image;
- an image made public later keeps its old ``created`` (it lands in the past of the order);
  edits of metadata, attribution (read live from the cohort) and licence happen in place
  without any timestamp; collection membership never shows in the image record; a replaced
  file keeps its public URL; a deleted image is 404 and its id is never reused.
"""

from __future__ import annotations

import copy
import hashlib
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

DAY = 86400
FIRST_PUBLISH = datetime(2016, 1, 4, 9, 0, tzinfo=UTC)
CLOCK_START = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)  # sandbox "now" when it starts
INITIAL_SPAN = (CLOCK_START.replace(hour=0, minute=0) - FIRST_PUBLISH).total_seconds()
TODAY_PUBLISHES = 2  # initial images published after the last midnight: not yet in ES
LICENSES = ("CC-0", "CC-BY", "CC-BY-NC")
MORE_PERMISSIVE = {"CC-BY-NC": "CC-BY", "CC-BY": "CC-0"}
ANONYMOUS, USER, STAFF = "anonymous", "user", "staff"

# The sandbox's logged-in user (token ``sandbox-token``) owns cohort 6's contributor and
# has been shared a few images of cohort 7; staff (``sandbox-staff-token``) sees everything.
SANDBOX_USER = {"created": "2021-03-04T17:22:10.123Z", "accepted_terms": None,
                "hash_id": "SB2XK", "full_name": "Sandbox User", "id": 7,
                "email": "sandbox-user@example.org", "first_name": "Sandbox",
                "last_name": "User"}
STAFF_USER = {"created": "2019-05-21T08:00:00Z", "accepted_terms": "2019-05-21T08:01:12.500Z",
              "hash_id": "ST4FF", "full_name": "Staff Member", "id": 1,
              "email": "staff@example.org", "first_name": "Staff", "last_name": "Member"}


@dataclass
class Cohort:
    id: int
    name: str
    attribution: str  # default_attribution: read live by every image record
    license: str
    private_rate: float  # share of its images published private (embargoed)
    owned_by_user: bool = False


COHORTS = [
    Cohort(1, "Barcelona dermoscopy", "Hospital Cl\u00ednic de Barcelona", "CC-BY-NC", 0.0),
    Cohort(2, "Vienna nevi",
           "ViDIR Group, Department of Dermatology, Medical University of Vienna",
           "CC-BY-NC", 0.0),
    Cohort(3, "MSKCC longitudinal", "Memorial Sloan Kettering Cancer Center", "CC-BY", 0.0),
    Cohort(4, "Anonymous contributions", "Anonymous", "CC-0", 0.0),
    Cohort(5, "Queensland TBP",
           "The University of Queensland Diamantina Institute, The University of Queensland, "
           "Dermatology Research Centre", "CC-BY", 0.0),
    Cohort(6, "Sandbox Lab", "Sandbox Lab, Universit\u00e4tsklinikum Beispielstadt", "CC-BY",
           0.6, owned_by_user=True),
    Cohort(7, "Embargoed study", "D\u00e9partement de dermatologie, H\u00f4pital Exemple",
           "CC-BY-NC", 0.8),
]
COHORT_WEIGHTS = (22, 18, 16, 12, 12, 10, 10)

DIAGNOSES = [  # (weight, colon path, melanoma?)
    (30, "Benign:Benign melanocytic proliferations:Nevus", False),
    (6, "Benign:Benign melanocytic proliferations:Nevus:Nevus, Spitz", False),
    (8, "Benign:Benign epidermal proliferations:Seborrheic keratosis", False),
    (4, "Benign:Flat melanotic pigmentations - not melanocytic nevus:Solar lentigo", False),
    (3, "Benign:Benign soft tissue proliferations - Vascular:Hemangioma", False),
    (5, "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic keratosis",
     False),
    (2, "Indeterminate:Indeterminate melanocytic proliferations:Atypical melanocytic "
        "neoplasm", False),
    (9, "Malignant:Malignant adnexal epithelial proliferations - Follicular:"
        "Basal cell carcinoma", False),
    (4, "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma, Invasive",
     False),
    (8, "Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma Invasive", True),
    (4, "Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma Invasive:"
        "Melanoma Invasive, Superficial spreading", True),
    (4, "Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma in situ", True),
    (1, "Malignant:Lymphocytic proliferations - T-Cell/NK:Primary cutaneous T-cell lymphoma:"
        "Primary cutaneous CD30+ lymphoproliferative disease", False),
    (3, "Benign", False),
]
ANATOM_SITES = [
    "Head and neck:Head:Face", "Head and neck:Neck", "Trunk:Anterior trunk:Chest",
    "Trunk:Anterior trunk:Abdomen", "Trunk:Posterior trunk:Upper back",
    "Trunk:Posterior trunk:Lower back", "Trunk:Lateral trunk", "Upper extremity:Upper arm",
    "Upper extremity:Forearm", "Upper extremity:Hand:Palm", "Lower extremity:Thigh",
    "Lower extremity:Lower leg", "Lower extremity:Foot:Sole", "Anogenital region:Genital region",
]
CONFIRM_TYPES = ("histopathology", "serial imaging showing no change",
                 "single image expert consensus", "confocal microscopy with consensus dermoscopy",
                 "single contributor clinical assessment")
DERMOSCOPIC_TYPES = ("contact polarized", "contact non-polarized", "non-contact polarized")
MITOTIC = ("0/mm^2", "<1/mm^2", "1/mm^2", "2/mm^2", "3/mm^2", "4/mm^2", ">4/mm^2")
SIZES = ((320, 240), (400, 300), (480, 360), (360, 360), (300, 400), (448, 336), (384, 256))
IMAGE_TYPE_RANK = {"dermoscopic": 0, "clinical: close-up": 1, "TBP tile: close-up": 2,
                   "clinical: overview": 3, "TBP tile: overview": 4}

# Key order of ImageOut.metadata, from the server's model field order (note §4.1).
ACQUISITION_ORDER = ("pixels_x", "pixels_y", "image_manipulation", "image_type",
                     "dermoscopic_type")
CLINICAL_ORDER = (
    "concomitant_biopsy", "fitzpatrick_skin_type", "sex", "anatom_site_special",
    *(f"anatom_site_{n}" for n in range(1, 6)), *(f"diagnosis_{n}" for n in range(1, 6)),
    "diagnosis_confirm_type", "personal_hx_mm", "family_hx_mm", "clin_size_long_diam_mm",
    "melanocytic", "mel_mitotic_index", "mel_thick_mm", "mel_ulcer", "acquisition_day",
    "tbp_tile_type", "age_approx", "lesion_id", "patient_id", "rcm_case_id",
)


def rng_for(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _weighted(rng: random.Random, items: list[tuple]) -> tuple:
    return rng.choices(items, weights=[item[0] for item in items])[0]


def _decimal(value: float) -> str:
    """A ``numeric(5,2)`` column as Django's JSON encoder writes it: ``"0.50"``."""
    return f"{value:.2f}"


@dataclass
class Image:
    """One published image (an ``Image`` row with its accession)."""

    n: int  # internal primary key, in publish order
    isic_id: str
    created: datetime
    cohort: int
    public: bool
    license: str
    metadata: dict  # flat: registry field -> JSON value; absent when unset
    frozen_attribution: str  # accession.attribution at publish: the bytes' IPTC credit
    frozen_license: str = ""  # the licence embedded in the bytes (a relicense does not re-embed)
    shared_with_user: bool = False
    pinned: int = 0
    file_rev: int = 0  # bumped when the file is reprocessed
    file_modified: datetime | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(pixels_x, pixels_y) of the stored blob; a reprocess may change them."""
        width, height = rng_for("dims", self.isic_id, 0).choice(SIZES)
        if self.file_rev and rng_for("dims", self.isic_id, self.file_rev).random() < 0.5:
            return width - 2 * self.file_rev, height - 2 * self.file_rev  # a new crop
        return width, height

    def search_record(self) -> dict:
        """The flat field -> value dict the search language evaluates."""
        return {**self.metadata, "isic_id": self.isic_id, "public": self.public,
                "copyright_license": self.license}


@dataclass
class Collection:
    id: int
    name: str
    description: str
    created: datetime
    public: bool = True
    pinned: bool = False
    locked: bool = False
    doi: str | None = None
    owned_by_user: bool = False
    shared_with_user: bool = False
    images: set[int] = field(default_factory=set)  # Image.n


@dataclass
class EsDoc:
    """An image as the nightly Elasticsearch sync last indexed it."""

    public: bool
    cohort: int
    shared_with_user: bool
    image: Image  # a copy as indexed: its file revision gives the indexed blob_size
    record: dict
    collections: frozenset[int]

    @property
    def blob_size(self) -> int:
        """The indexed ``blob_size`` (computed on demand: it means drawing the JPEG)."""
        from mirror.sources.isic_v2.sandbox import blobs  # blobs imports this module

        return blobs.recorded_sizes(self.image)[0]


class Archive:
    """The whole mutable archive behind the sandbox; thread-safe through ``lock``."""

    def __init__(self, images: int = 100, seed: int = 0):
        self.seed = seed
        self.lock = threading.RLock()
        self.now = CLOCK_START.timestamp()
        self.cohorts = {c.id: copy.deepcopy(c) for c in COHORTS}
        self.images: dict[int, Image] = {}  # live images by n
        self.by_isic_id: dict[str, int] = {}
        self.used_ids: set[str] = set()  # never reused, deleted ones included
        self.deleted: dict[str, Image] = {}  # their public objects stay in the bucket
        self.collections: dict[int, Collection] = {}
        self.es: dict[int, EsDoc] = {}
        self.es_synced_at = 0.0
        self.mutations = 0  # also the version of the visible_images cache
        self._visible: dict[str, tuple[int, list[Image]]] = {}
        self._next_n = 0
        span = INITIAL_SPAN / max(images - TODAY_PUBLISHES, 1)
        midnight = self.now - self.now % DAY
        for i in range(images):
            if i < images - TODAY_PUBLISHES or images <= TODAY_PUBLISHES:
                jitter = rng_for(seed, "created", i).randrange(1, 900_000_000) / 1e6
                created = FIRST_PUBLISH.timestamp() + i * span + min(jitter, span / 2)
            else:  # published this morning, after the last nightly sync
                created = midnight + 3600 + 60 * (i - images + TODAY_PUBLISHES + 1) + 0.25
            self._publish(rng_for(seed, "image", i), created)
        self._make_collections()
        self._sync_search_index(midnight, include_after=False)

    # -- generation ------------------------------------------------------------------------

    def _new_isic_id(self, rng: random.Random) -> str:
        while True:
            isic_id = f"ISIC_{rng.randrange(10**7):07d}"
            if isic_id not in self.used_ids:
                self.used_ids.add(isic_id)
                return isic_id

    def _publish(self, rng: random.Random, created: float, cohort: int | None = None,
                 public: bool | None = None) -> Image:
        cohort_id = cohort or rng.choices([c.id for c in COHORTS], COHORT_WEIGHTS)[0]
        owner = self.cohorts[cohort_id]
        if public is None:
            public = rng.random() >= owner.private_rate
        license_ = owner.license if rng.random() < 0.85 else rng.choice(LICENSES)
        n = self._next_n
        self._next_n += 1
        image = Image(n=n, isic_id=self._new_isic_id(rng),
                      created=datetime.fromtimestamp(created, UTC), cohort=cohort_id,
                      public=public, license=license_, metadata={},
                      frozen_attribution=owner.attribution, frozen_license=license_,
                      shared_with_user=cohort_id == 7 and not public and rng.random() < 0.5)
        image.metadata = self._metadata(rng, image)
        self.images[n] = image
        self.by_isic_id[image.isic_id] = n
        for collection in self.collections.values():  # the cohort's "magic" collection
            if collection.name == f"Publish of {owner.name}":
                collection.images.add(n)
        return image

    def _metadata(self, rng: random.Random, image: Image) -> dict:
        meta: dict = {}
        roll = rng.random()
        image_type = ("dermoscopic" if roll < 0.78 else "clinical: close-up" if roll < 0.88
                      else "clinical: overview" if roll < 0.91 else "TBP tile: close-up")
        if image.cohort == 5:
            image_type = "TBP tile: close-up"
        meta["image_type"] = image_type
        if image_type == "dermoscopic" and rng.random() < 0.6:
            meta["dermoscopic_type"] = rng.choice(DERMOSCOPIC_TYPES)
        if rng.random() < 0.03:
            meta["image_manipulation"] = "instrument only"
        if image_type.startswith("TBP"):
            meta["tbp_tile_type"] = rng.choice(("3D: white", "3D: XP", "2D"))
        if rng.random() < 0.92:
            meta["age_approx"] = int(round(rng.randrange(5, 90) / 5) * 5)
        if rng.random() < 0.9:
            meta["sex"] = rng.choice(("male", "female"))
        if rng.random() < 0.85:
            for level, name in enumerate(rng.choice(ANATOM_SITES).split(":"), 1):
                meta[f"anatom_site_{level}"] = name
        if rng.random() < 0.02:
            meta["anatom_site_special"] = rng.choice(("acral NOS", "nail NOS"))
        self._set_diagnosis(rng, meta)
        if rng.random() < 0.2:
            meta["personal_hx_mm"] = rng.random() < 0.3
            meta["family_hx_mm"] = rng.random() < 0.2
        if rng.random() < 0.3:
            meta["clin_size_long_diam_mm"] = _decimal(rng.randrange(10, 300) / 10)
        if rng.random() < 0.1:
            meta["fitzpatrick_skin_type"] = rng.choice(("I", "II", "III", "IV", "V", "VI"))
        if image.cohort in (3, 5) or rng.random() < 0.15:  # longitudinal: lesions
            lesion = rng.randrange(max(2, len(self.images) // 3 + 2))
            meta["lesion_id"] = f"IL_{rng_for(self.seed, 'lesion', lesion).randrange(10**7):07d}"
            meta["patient_id"] = f"IP_{rng_for(self.seed, 'patient', lesion).randrange(10**7):07d}"
            meta["acquisition_day"] = rng.randrange(0, 1500)
        return meta

    @staticmethod
    def _set_diagnosis(rng: random.Random, meta: dict) -> None:
        for key in [k for k in meta if k.startswith(("diagnosis_", "mel_", "concomitant"))]:
            del meta[key]
        meta.pop("melanocytic", None)
        if rng.random() >= 0.9:
            return
        _, path, melanoma = _weighted(rng, DIAGNOSES)
        for level, name in enumerate(path.split(":"), 1):
            meta[f"diagnosis_{level}"] = name
        confirm = rng.choice(CONFIRM_TYPES) if rng.random() < 0.8 else None
        if melanoma:
            confirm = "histopathology"
            meta["mel_thick_mm"] = _decimal(rng.randrange(0, 400) / 100)
            meta["mel_ulcer"] = rng.random() < 0.2
            if rng.random() < 0.5:
                meta["mel_mitotic_index"] = rng.choice(MITOTIC)
        if confirm:
            meta["diagnosis_confirm_type"] = confirm
            if confirm == "histopathology" and rng.random() < 0.5:
                meta["concomitant_biopsy"] = True
        if "melanocytic proliferations" in path or "Nevus" in path:
            meta["melanocytic"] = True
        elif rng.random() < 0.3:
            meta["melanocytic"] = False

    def _make_collections(self) -> None:
        start = FIRST_PUBLISH
        live = sorted(self.images.values(), key=lambda i: i.created)
        public = [i.n for i in live if i.public]
        rng = rng_for(self.seed, "collections")

        def add(cid: int, name: str, days: int, **kwargs) -> Collection:
            created = start + timedelta(days=days, seconds=cid * 37, microseconds=cid * 1013)
            collection = Collection(cid, name, kwargs.pop("description", ""), created, **kwargs)
            self.collections[cid] = collection
            return collection

        add(61, "Challenge 2019: Training", 1200, pinned=True, locked=True,
            doi="10.34970/245161", description="The ISIC 2019 challenge training data.",
            ).images.update(public[: len(public) * 2 // 3])
        add(62, "HAM10000", 900, pinned=True, locked=True, doi="10.34970/110105",
            description="Human Against Machine with 10000 training images.",
            ).images.update(n for n in public if self.images[n].cohort == 2)
        melanoma = [n for n in public
                    if "Melanoma" in self.images[n].metadata.get("diagnosis_2", "")]
        add(64, "Melanoma examples", 2100, description="Curated melanoma images \u2014 "
            "a teaching set.").images.update(melanoma)
        add(66, "Longitudinal", 2500).images.update(
            n for n in public if "lesion_id" in self.images[n].metadata)
        for cohort in self.cohorts.values():
            add(200 + cohort.id, f"Publish of {cohort.name}", 30 * cohort.id, public=False,
                locked=True, owned_by_user=cohort.owned_by_user).images.update(
                n for n in self.images if self.images[n].cohort == cohort.id)
        add(170, "Sandbox user's working set", 3600, public=False, owned_by_user=True,
            ).images.update(rng.sample(public, min(5, len(public))) + [
                n for n in self.images if self.images[n].cohort == 6])
        embargoed = [n for n in self.images
                     if self.images[n].cohort == 7 and not self.images[n].public]
        add(171, "Embargoed study (draft DOI)", 3700, public=False).images.update(embargoed)
        add(172, "Shared with the sandbox user", 3750, public=False, shared_with_user=True,
            ).images.update(n for n in embargoed if self.images[n].shared_with_user)

    # -- visibility ----------------------------------------------------------------------------

    def can_see_image(self, image: Image, who: str) -> bool:
        if image.public or who == STAFF:
            return True
        return who == USER and (self.cohorts[image.cohort].owned_by_user
                                or image.shared_with_user)

    def can_see_collection(self, collection: Collection, who: str) -> bool:
        if collection.public or who == STAFF:
            return True
        return who == USER and (collection.owned_by_user or collection.shared_with_user)

    def visible_images(self, who: str) -> list[Image]:
        """Images ``who`` may see, in ``created`` order (cached until the next mutation:
        paging through a large sandbox must not sort it once per page)."""
        with self.lock:
            cached = self._visible.get(who)
            if cached is not None and cached[0] == self.mutations:
                return cached[1]
            rows = sorted((i for i in self.images.values() if self.can_see_image(i, who)),
                          key=lambda i: i.created)
            self._visible[who] = (self.mutations, rows)
            return rows

    def image(self, isic_id: str, who: str) -> Image | None:
        with self.lock:
            n = self.by_isic_id.get(isic_id)
            image = self.images.get(n) if n is not None else None
        return image if image is not None and self.can_see_image(image, who) else None

    def collection_ids_of(self, n: int) -> frozenset[int]:
        return frozenset(c.id for c in self.collections.values() if n in c.images)

    def attribution(self, image: Image) -> str:
        return self.cohorts[image.cohort].attribution

    # -- lesions -------------------------------------------------------------------------------

    def lesions(self, who: str) -> dict[str, list[Image]]:
        """Lesion id -> its published images (newest first), for lesions ``who`` may see:
        every image of the lesion visible (for anonymous callers: all of them public)."""
        groups: dict[str, list[Image]] = {}
        with self.lock:
            for image in self.images.values():
                lesion = image.metadata.get("lesion_id")
                if lesion:
                    groups.setdefault(lesion, []).append(image)
        return {lesion: sorted(rows, key=lambda i: i.created, reverse=True)
                for lesion, rows in sorted(groups.items())
                if all(self.can_see_image(i, who) for i in rows)}

    # -- the nightly search index ----------------------------------------------------------------

    def _sync_search_index(self, at: float, include_after: bool = True) -> None:
        """Re-index every current image (never dropping deleted ones), as the 00:00 UTC task."""
        for image in self.images.values():
            if not include_after and image.created.timestamp() > at:
                continue
            self.es[image.n] = EsDoc(image.public, image.cohort, image.shared_with_user,
                                     copy.copy(image), copy.deepcopy(image.search_record()),
                                     self.collection_ids_of(image.n))
        self.es_lesions = {who: len(self.lesions(who)) for who in (ANONYMOUS, USER, STAFF)}
        self.es_synced_at = at

    def es_visible(self, doc: EsDoc, who: str) -> bool:
        if doc.public or who == STAFF:
            return True
        return who == USER and (self.cohorts[doc.cohort].owned_by_user or doc.shared_with_user)

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock; each UTC midnight crossed runs the nightly index sync."""
        with self.lock:
            before = self.now
            self.now += seconds
            last_midnight = self.now - self.now % DAY
            if last_midnight > before:
                self._sync_search_index(last_midnight)

    # -- mutations -------------------------------------------------------------------------------

    def mutate(self, **changes) -> dict:  # noqa: C901 - one branch per kind of change
        """Apply changes (each a count of random victims or a list of ids); see MUTATIONS."""
        unknown = sorted(set(changes) - set(MUTATIONS))
        if unknown:
            raise ValueError(f"unknown mutation(s) {', '.join(unknown)}; "
                             f"known: {', '.join(MUTATIONS)}")
        with self.lock:
            self.mutations += 1
            rng = rng_for(self.seed, "mutate", self.mutations)
            done: dict[str, list] = {}
            get = changes.get
            if get("add") or get("add_private"):
                done["added"] = self._add(rng, int(get("add") or 0), int(get("add_private") or 0))
            if get("publish") or get("publish_ids"):
                victims = self._pick(rng, get("publish", 0), get("publish_ids"),
                                     lambda i: not i.public)
                done["published"] = [self._unembargo(i) for i in victims]
            if get("doi") is not None:
                done["doi_published"] = self._publish_doi(int(get("doi")))
            if get("edit") or get("edit_ids"):
                victims = self._pick(rng, get("edit", 0), get("edit_ids"))
                done["edited"] = [self._edit(rng, i) for i in victims]
            if get("reattribute") or get("reattribute_cohorts"):
                done["reattributed_cohorts"] = self._reattribute(
                    rng, int(get("reattribute") or 0), get("reattribute_cohorts") or [])
            if get("relicense") or get("relicense_ids"):
                victims = self._pick(rng, get("relicense", 0), get("relicense_ids"),
                                     lambda i: i.license != "CC-0")
                for image in victims:
                    image.license = MORE_PERMISSIVE.get(image.license, image.license)
                done["relicensed"] = [i.isic_id for i in victims]
            if get("collect") or get("collect_ids") or get("uncollect") or get("uncollect_ids"):
                done.update(self._membership(rng, changes))
            if get("edit_collections"):
                for cid in get("edit_collections"):
                    collection = self.collections[int(cid)]
                    collection.description = (collection.description + " (edited)").strip()
                done["collections_edited"] = [int(c) for c in get("edit_collections")]
            if get("replace") or get("replace_ids"):
                victims = self._pick(rng, get("replace", 0), get("replace_ids"))
                for image in victims:  # regenerated from the upload, credit re-embedded
                    image.file_rev += 1
                    image.file_modified = datetime.fromtimestamp(self.now, UTC)
                    image.frozen_license = image.license
                done["replaced"] = [i.isic_id for i in victims]
            if get("delete") or get("delete_ids"):
                victims = self._pick(rng, get("delete", 0), get("delete_ids"))
                done["deleted"] = [self._delete(i) for i in victims]
            if get("advance"):
                self.advance(float(get("advance")))
            if get("midnight"):
                self.advance(DAY - self.now % DAY + 1)
            done["now"] = datetime.fromtimestamp(self.now, UTC).isoformat()
            return done

    def _pick(self, rng: random.Random, count: int, ids: list[str] | None,
              eligible=lambda image: True) -> list[Image]:
        chosen = []
        for isic_id in ids or []:
            n = self.by_isic_id.get(isic_id)
            if n is None:
                raise ValueError(f"no image {isic_id!r} in the sandbox")
            chosen.append(self.images[n])
        pool = sorted((i for i in self.images.values() if eligible(i) and i not in chosen),
                      key=lambda i: i.n)
        chosen += rng.sample(pool, min(int(count or 0), len(pool)))
        return chosen

    def _add(self, rng: random.Random, public: int, private: int) -> list[str]:
        added = []
        latest = max([i.created.timestamp() for i in self.images.values()] + [self.now])
        for k in range(public + private):
            self.now = max(self.now, latest) + 1.5  # publishing takes time
            latest = self.now
            image = self._publish(rng, self.now + rng.randrange(1, 999_999) / 1e6,
                                  cohort=6 if k >= public else rng.choice((1, 2, 3, 4, 5)),
                                  public=k < public)
            added.append(image.isic_id)
        return added

    def _unembargo(self, image: Image) -> str:
        """Private -> public: same ``created`` (in the past), public URL, old keys deleted."""
        image.public = True
        image.shared_with_user = False
        image.file_rev += 1  # re-embedded and copied: the private key is gone
        image.file_modified = datetime.fromtimestamp(self.now, UTC)
        return image.isic_id

    def _publish_doi(self, cid: int) -> list[str]:
        collection = self.collections.get(cid)
        if collection is None:
            raise ValueError(f"no collection {cid} in the sandbox")
        published = [self._unembargo(self.images[n]) for n in sorted(collection.images)
                     if n in self.images and not self.images[n].public]
        collection.public, collection.locked = True, True
        number = rng_for(self.seed, "doi", cid).randrange(10**6)
        collection.doi = collection.doi or f"10.34970/{number:06d}"
        return published

    def _edit(self, rng: random.Random, image: Image) -> str:
        """One in-place metadata edit (as staff's ``apply_published_metadata``): a new
        diagnosis, an older age, a size added or dropped, a skin type; always a change."""
        meta = image.metadata
        before = dict(meta)
        choice = rng.randrange(4)
        if choice == 0:
            self._set_diagnosis(rng, meta)
        elif choice == 1:
            meta["age_approx"] = min(85, int(meta.get("age_approx", 40)) + 5)
        elif choice == 2:
            if "clin_size_long_diam_mm" in meta:
                del meta["clin_size_long_diam_mm"]
            else:
                meta["clin_size_long_diam_mm"] = _decimal(rng.randrange(10, 300) / 10)
        else:
            meta["fitzpatrick_skin_type"] = rng.choice(("I", "II", "III", "IV", "V", "VI"))
        if meta == before:  # the draw changed nothing: flip a history flag instead
            meta["personal_hx_mm"] = not meta.get("personal_hx_mm", False)
        return image.isic_id

    def _reattribute(self, rng: random.Random, count: int, cohort_ids: list) -> list[int]:
        chosen = [int(c) for c in cohort_ids]
        pool = [c for c in sorted(self.cohorts) if c not in chosen]
        chosen += rng.sample(pool, min(count, len(pool)))
        for cid in chosen:
            cohort = self.cohorts[cid]
            base = cohort.attribution.split(" (rev ")[0]
            revision = cohort.attribution.count("(rev ") + self.mutations
            cohort.attribution = f"{base} (rev {revision})"
        return chosen

    def _membership(self, rng: random.Random, changes: dict) -> dict:
        cid = int(changes.get("collection") or 64)
        collection = self.collections.get(cid)
        if collection is None:
            raise ValueError(f"no collection {cid} in the sandbox")

        def allowed(image: Image) -> bool:  # a public collection holds only public images
            return image.public or not collection.public

        added = self._pick(rng, changes.get("collect", 0), changes.get("collect_ids"),
                           lambda i: i.n not in collection.images and allowed(i))
        if any(not allowed(i) for i in added):
            raise ValueError(f"collection {cid} is public: it cannot contain private images")
        collection.images.update(i.n for i in added)
        removed = self._pick(rng, changes.get("uncollect", 0), changes.get("uncollect_ids"),
                             lambda i: i.n in collection.images)
        collection.images.difference_update(i.n for i in removed)
        return {"collected": [i.isic_id for i in added],
                "uncollected": [i.isic_id for i in removed], "collection": cid}

    def _delete(self, image: Image) -> str:
        del self.images[image.n]
        del self.by_isic_id[image.isic_id]
        self.deleted[image.isic_id] = image
        for collection in self.collections.values():
            collection.images.discard(image.n)
        return image.isic_id

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict:
        """``stats/``: direct counts over all objects, whoever asks."""
        with self.lock:
            images = list(self.images.values())
            collections = list(self.collections.values())
        return {
            "image": {"images_count": len(images),
                      "public_images_count": sum(i.public for i in images),
                      "annotated_images_count": 0},
            "collection": {"collections_count": len(collections),
                           "public_collections_count": sum(c.public for c in collections)},
            "doi": {"dois_count": sum(c.doi is not None for c in collections)},
            "study": {"studies_count": 3, "public_studies_count": 1,
                      "study_annotations_count": 0},
            "user": {"users_count": 2, "uploading_users_count": 1, "annotating_users_count": 0},
            "engagement": {"30_day_sessions_count": 0},
        }


MUTATIONS = {
    "add": "N new public images, appended at the end of the created order",
    "add_private": "N new private images in the sandbox user's cohort",
    "publish": "N private images made public (they keep their old created: the past)",
    "publish_ids": "those isic_ids made public",
    "doi": "a collection id: its DOI published, every private image in it made public",
    "edit": "N images' metadata edited in place",
    "edit_ids": "those isic_ids edited",
    "reattribute": "N cohorts' attribution changed (every image of theirs changes)",
    "reattribute_cohorts": "those cohort ids reattributed",
    "relicense": "N images moved to a more permissive licence",
    "relicense_ids": "those isic_ids relicensed",
    "collection": "the collection id collect/uncollect act on (default 64)",
    "collect": "N images added to the collection",
    "collect_ids": "those isic_ids added to the collection",
    "uncollect": "N images removed from the collection",
    "uncollect_ids": "those isic_ids removed from the collection",
    "edit_collections": "those collection ids' descriptions edited",
    "replace": "N images' files reprocessed (new bytes and size, same public URL)",
    "replace_ids": "those isic_ids reprocessed",
    "delete": "N images deleted (404 from then on; ids never reused)",
    "delete_ids": "those isic_ids deleted",
    "advance": "seconds to move the sandbox clock (a crossed midnight re-indexes search)",
    "midnight": "true: move the clock just past the next UTC midnight (nightly re-index)",
}
