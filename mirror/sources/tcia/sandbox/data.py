"""The TCIA sandbox's archive: NBIA's per-series state, deterministic data, and mutations.

The state follows what NBIA stores per series (research note ``tcia_idc_changes.md`` §1.1):
a ``visibility`` code (only ``"1"`` is public), a nullable ``date_released`` datetime, a
``released_status``, a ``max_submission_timestamp``, per-series licence/URI/collection/site,
and image rows ``(SOPInstanceUID, md5, size)`` from which ``ImageCount``/``FileSize`` and the
MD5 hierarchy are computed on every request. Instances are real DICOM built by
:func:`mirror.sources.dicom.make_instance`, so every byte a client receives can be checked
with pydicom.

Time is a logical clock (:attr:`Archive.now`) that each mutation moves one day forward, so
``getUpdatedSeries?fromDate=<the day before>`` finds what a mutation released, run after run.
"""

from __future__ import annotations

import copy
import hashlib
import random
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from mirror.sources.dicom import make_instance, uid_for

VISIBLE = "1"
NOT_YET_REVIEWED = "0"
NOT_VISIBLE = "2"
START = datetime(2024, 1, 1, 9, 30)
"""The logical clock's reading when the sandbox starts; initial releases are before it."""

COLLECTION_KINDS = (
    # name, modality, template, body part, manufacturer, model, licence
    ("Sandbox-Lung-CT", "CT", "CT_small.dcm", "CHEST", "GE MEDICAL SYSTEMS", "LightSpeed16"),
    ("Sandbox-Brain-MR", "MR", "MR_small.dcm", "BRAIN", "SIEMENS", "Avanto"),
    ("Sandbox-Pelvis-CT", "CT", "CT_small.dcm", "PELVIS", "TOSHIBA", "Aquilion"),
    ("Sandbox-Breast-MR", "MR", "MR_small.dcm", "BREAST", "GE MEDICAL SYSTEMS", "SIGNA HDxt"),
)
TEMPLATE_GEOMETRY = {"CT_small.dcm": (0.661468, 5.0), "MR_small.dcm": (0.3125, 0.8)}
"""(PixelSpacing row, SliceThickness) of each template, as NBIA stores them per series."""
LICENSES = (
    ("Creative Commons Attribution 4.0 International License",
     "https://creativecommons.org/licenses/by/4.0/"),
    ("Creative Commons Attribution 3.0 Unported License",
     "http://creativecommons.org/licenses/by/3.0/"),
)


def md5_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def midnight(day: datetime | date) -> datetime:
    return datetime(day.year, day.month, day.day)


@dataclass
class Image:
    """One ``general_image`` row: the stored file and what NBIA recorded about it."""

    sop_uid: str
    instance_number: int
    acquisition_number: int
    data: bytes
    md5: str = ""
    size: int = 0

    def __post_init__(self) -> None:
        self.md5 = md5_hex(self.data)
        self.size = len(self.data)


@dataclass
class Patient:
    patient_id: str
    collection: str
    name: str
    sex: str | None
    age: str | None
    ethnic_group: str | None = None
    phantom: str = "NO"
    species_code: str = "337915000"
    species_description: str = "Homo sapiens"


@dataclass
class Study:
    uid: str
    patient_id: str
    collection: str
    day: date
    description: str
    study_id: str
    admitting_diagnosis: str | None = None


@dataclass
class Series:
    """One ``general_series`` row and its images (dict order is the database's order)."""

    uid: str
    study_uid: str
    patient_id: str
    collection: str
    site: str
    modality: str
    template: str
    number: int
    description: str
    body_part: str
    manufacturer: str
    model: str
    software: str
    license_name: str
    license_uri: str
    description_uri: str
    protocol: str | None = None
    annotations_flag: str | None = None
    third_party: str = "NO"
    pixel_spacing: float | None = None  # the template's, for getSeriesMetadata
    slice_thickness: float | None = None
    visibility: str = VISIBLE
    date_released: datetime | None = None
    released_status: str = "Yes"
    max_submission: datetime = START
    images: dict[str, Image] = field(default_factory=dict)
    revision: int = 0  # how many times it was re-processed (changes the instance bytes)

    @property
    def visible(self) -> bool:
        return self.visibility == VISIBLE

    @property
    def image_count(self) -> int:
        return len(self.images)

    @property
    def file_size(self) -> int:
        return sum(image.size for image in self.images.values())


class Archive:
    """Collections of patients, studies and series with NBIA's state rules.

    Every read and mutation holds :attr:`lock`; handlers call the read methods, which return
    copies of what they need, so a mutation never shows half done.
    """

    def __init__(self, collections: int = 2, seed: int = 0):
        if collections < 1:
            raise ValueError("--collections must be at least 1")
        self.seed = seed
        self.rng = random.Random(f"tcia-sandbox:{seed}")
        self.lock = threading.RLock()
        self.now = START
        self.patients: dict[tuple[str, str], Patient] = {}  # (PatientID, Collection)
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}
        self.collection_md5: dict[str, str] = {}  # the daily job's snapshot (lags)
        self._counter = 0
        for index in range(collections):
            self._make_collection(index)
        self.run_md5_job()

    # --- generation ---------------------------------------------------------------------

    def _kind(self, collection: str) -> tuple:
        for kind in COLLECTION_KINDS:
            if collection.startswith(kind[0]):
                return kind
        return COLLECTION_KINDS[0]

    def _make_collection(self, index: int) -> None:
        kind = COLLECTION_KINDS[index % len(COLLECTION_KINDS)]
        name = kind[0] if index < len(COLLECTION_KINDS) else f"{kind[0]}-{index + 1}"
        released = START - timedelta(days=400 - 30 * index)
        for _ in range(3):
            self._make_patient(name, midnight(released))

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _make_patient(self, collection: str, released: datetime) -> Patient:
        number = sum(1 for key in self.patients if key[1] == collection) + 1
        prefix = "".join(part[0] for part in collection.split("-")[1:]).upper() or "SB"
        pid = f"{prefix}-{number:03d}"
        while (pid, collection) in self.patients:
            number += 1
            pid = f"{prefix}-{number:03d}"
        patient = Patient(pid, collection, name=pid, sex=self.rng.choice(("M", "F", None)),
                          age=f"{self.rng.randint(30, 80):03d}Y")
        self.patients[(pid, collection)] = patient
        for _ in range(self.rng.randint(1, 2)):
            study = self._make_study(patient)
            for _ in range(2):
                self._make_series(study, released)
        return patient

    def _make_study(self, patient: Patient) -> Study:
        n = self._next()
        uid = uid_for("tcia-sandbox", str(self.seed), "study", str(n))
        day = date(1995, 1, 1) + timedelta(days=self.rng.randint(0, 7000))
        kind = self._kind(patient.collection)
        study = Study(uid, patient.patient_id, patient.collection, day,
                      description=f"{kind[1]} {kind[3]}", study_id=str(n),
                      admitting_diagnosis=self.rng.choice((None, "Carcinoma")))
        self.studies[uid] = study
        return study

    def _make_series(self, study: Study, released: datetime | None) -> Series:
        n = self._next()
        kind = self._kind(study.collection)
        number = 1 + sum(1 for s in self.series.values() if s.study_uid == study.uid)
        license_name, license_uri = LICENSES[0]
        series = Series(
            uid=uid_for("tcia-sandbox", str(self.seed), "series", str(n)),
            study_uid=study.uid, patient_id=study.patient_id, collection=study.collection,
            site=self.rng.choice(("Site-A", "Site-B")), modality=kind[1], template=kind[2],
            number=number, description=self.rng.choice(("AX 5mm", "COR 3mm", "SAG T1")),
            body_part=kind[3], manufacturer=kind[4], model=kind[5],
            software=self.rng.choice(("07", "LCS 5.4", "syngo MR B17")),
            license_name=license_name, license_uri=license_uri,
            description_uri=f"https://doi.org/10.7937/sandbox.{study.collection.lower()}",
            protocol=self.rng.choice((None, "Routine", "Research")),
            annotations_flag=self.rng.choice((None, "No")),
            date_released=released, max_submission=released or self.now)
        for i in range(self.rng.randint(2, 4)):
            self._add_image(series, i + 1)
        series.pixel_spacing, series.slice_thickness = TEMPLATE_GEOMETRY[kind[2]]
        self.series[series.uid] = series
        return series

    def _instance_bytes(self, series: Series, sop_uid: str, number: int) -> bytes:
        study = self.studies[series.study_uid]
        extra = {"SeriesDescription": series.description, "SeriesNumber": series.number,
                 "Modality": series.modality, "BodyPartExamined": series.body_part,
                 "StudyDate": study.day.strftime("%Y%m%d"), "AcquisitionNumber": 1}
        if series.revision:
            extra["ImageComments"] = f"re-processed, revision {series.revision}"
        return make_instance(series.template, patient_id=series.patient_id,
                             study_uid=series.study_uid, series_uid=series.uid,
                             sop_uid=sop_uid, instance_number=number, extra=extra)

    def _add_image(self, series: Series, number: int) -> Image:
        sop = uid_for("tcia-sandbox", str(self.seed), "sop", series.uid, str(number))
        image = Image(sop, number, 1, self._instance_bytes(series, sop, number))
        series.images[sop] = image
        return image

    # --- reads --------------------------------------------------------------------------

    def visible_series(self) -> list[Series]:
        with self.lock:
            return [s for s in self.series.values() if s.visible]

    def get_series(self, uid: str) -> Series | None:
        with self.lock:
            return self.series.get(uid)

    def collections(self) -> list[str]:
        with self.lock:
            return list(dict.fromkeys(s.collection for s in self.series.values() if s.visible))

    def today(self) -> str:
        """The clock's date as NBIA v4 writes dates (``MM-DD-YYYY``)."""
        return self.now.strftime("%m-%d-%Y")

    def snapshot(self) -> Archive:
        """A frozen copy (Bindaas v3 stopped changing in 2022); image bytes are shared."""
        with self.lock:
            frozen = copy.copy(self)
            frozen.lock = threading.RLock()
            frozen.patients = copy.deepcopy(self.patients)
            frozen.studies = copy.deepcopy(self.studies)
            frozen.series = {uid: copy.copy(s) for uid, s in self.series.items()}
            for s in frozen.series.values():
                s.images = dict(s.images)
            frozen.collection_md5 = dict(self.collection_md5)
            return frozen

    # --- getMD5Hierarchy (research note tcia_idc_changes.md §1.3) -------------------------

    @staticmethod
    def _digest_of(hashes: list[str]) -> str:
        joined = "".join(sorted(h for h in hashes if h))
        return md5_hex(joined) if joined else ""

    def series_md5(self, uid: str) -> str:
        """All image rows of the series, visible or not (the server does not filter)."""
        with self.lock:
            series = self.series.get(uid)
            return self._digest_of([i.md5 for i in series.images.values()]) if series else ""

    def study_md5(self, uid: str) -> str:
        with self.lock:
            return self._digest_of([self.series_md5(s.uid) for s in self.series.values()
                                    if s.study_uid == uid and s.visible])

    def patient_md5(self, patient_id: str, collection: str | None) -> str:
        if collection is None:
            return ""  # HQL ``gs.project = null`` matches nothing
        with self.lock:
            studies = dict.fromkeys(
                s.study_uid for s in self.series.values()
                if s.visible and s.patient_id.upper() == patient_id.upper()
                and s.collection.upper() == collection.upper())
            return self._digest_of([self.study_md5(uid) for uid in studies])

    def _collection_md5_live(self, collection: str) -> str:
        patients = dict.fromkeys(s.patient_id for s in self.series.values()
                                 if s.visible and s.collection == collection)
        return self._digest_of([self.patient_md5(pid, collection) for pid in patients])

    def collection_md5_served(self, collection: str) -> str:
        """What the server answers: the daily job's stored value, not a live one."""
        with self.lock:
            for name, value in self.collection_md5.items():
                if name.upper() == collection.upper():
                    return value
            return ""

    def run_md5_job(self) -> dict[str, str]:
        """NBIA's daily ``md5CacheUpdateJob``: recompute every collection's stored hash; a
        collection that now has no visible series keeps its old value."""
        with self.lock:
            for collection in dict.fromkeys(s.collection for s in self.series.values()):
                value = self._collection_md5_live(collection)
                if value:
                    self.collection_md5[collection] = value
            return dict(self.collection_md5)

    # --- mutations ----------------------------------------------------------------------

    def _tick(self) -> datetime:
        self.now += timedelta(days=1)
        return self.now

    def _series_or_raise(self, uid: str | None) -> Series:
        if uid is None:
            uid = next(iter(self.series))
        series = self.series.get(uid)
        if series is None:
            raise ValueError(f"no series {uid!r} in the sandbox")
        return series

    def _collection_or_raise(self, collection: str | None) -> str:
        names = list(dict.fromkeys(s.collection for s in self.series.values()))
        if collection is None:
            return names[0]
        if collection not in names:
            raise ValueError(f"no collection {collection!r}; the sandbox has {names}")
        return collection

    def mutate(self, op: str, **args) -> dict:
        """Apply one change the way NBIA's curators and submitters make it.

        Operations: ``add_series`` (collection, patient, new_study), ``add_patient``
        (collection), ``reprocess`` (series, add_instances), ``approve`` (series,
        date_released = "today" | None | "MM-DD-YYYY", released), ``withdraw`` (series),
        ``remove_patient`` (collection, patient), ``rename_collection`` (old, new),
        ``set_license`` (collection, name, uri), ``set_description_uri`` (collection, uri),
        ``md5_job``. Each moves the clock one day forward first and returns what changed.
        """
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            ops = sorted(n[4:] for n in dir(self) if n.startswith("_op_"))
            raise ValueError(f"unknown mutation {op!r}: use one of {', '.join(ops)}")
        with self.lock:
            before = self.now
            now = self._tick()
            try:
                result = handler(**args)
            except TypeError as exc:
                self.now = before
                raise ValueError(f"bad arguments for {op}: {exc}") from None
            except ValueError:
                self.now = before  # a refused change takes no time
                raise
            return {"op": op, "at": now.isoformat(), **result}

    def _op_add_series(self, collection: str | None = None, patient: str | None = None,
                       new_study: bool = False) -> dict:
        collection = self._collection_or_raise(collection)
        pids = [p.patient_id for p in self.patients.values() if p.collection == collection]
        pid = patient or pids[0]
        if pid not in pids:
            raise ValueError(f"no patient {pid!r} in {collection}")
        studies = [s for s in self.studies.values()
                   if s.patient_id == pid and s.collection == collection]
        if not studies and not new_study:
            raise ValueError(f"patient {pid!r} has no study in {collection}")
        study = (self._make_study(self.patients[(pid, collection)])
                 if new_study else studies[0])
        series = self._make_series(study, midnight(self.now))
        return {"series": series.uid, "study": study.uid, "patient": pid}

    def _op_add_patient(self, collection: str | None = None) -> dict:
        collection = self._collection_or_raise(collection)
        patient = self._make_patient(collection, midnight(self.now))
        series = [s.uid for s in self.series.values()
                  if s.patient_id == patient.patient_id and s.collection == collection]
        return {"patient": patient.patient_id, "series": series}

    def _op_reprocess(self, series: str | None = None, add_instances: int = 0) -> dict:
        """An image submission into an existing series: every image row is replaced
        (same SOPInstanceUID, new bytes, MD5 and size), the series becomes Not Yet
        Reviewed and its submission timestamp moves; ``date_released`` stays."""
        target = self._series_or_raise(series)
        target.revision += 1
        for image in list(target.images.values()):
            target.images[image.sop_uid] = Image(
                image.sop_uid, image.instance_number, image.acquisition_number,
                self._instance_bytes(target, image.sop_uid, image.instance_number))
        added = [self._add_image(target, target.image_count + 1).sop_uid
                 for _ in range(add_instances)]
        target.visibility = NOT_YET_REVIEWED
        target.max_submission = self.now
        return {"series": target.uid, "added": added}

    def _op_approve(self, series: str | None = None, date_released: str | None = "keep",
                    released: bool = True) -> dict:
        """A curator sets the series visible; ``date_released`` is "keep" (unchanged),
        "today", None (NotReleased), or an ``MM-DD-YYYY`` date (stored as midnight)."""
        target = self._series_or_raise(series)
        target.visibility = VISIBLE
        if not released or date_released is None:
            target.date_released, target.released_status = None, "No"
        elif date_released == "today":
            target.date_released, target.released_status = midnight(self.now), "Yes"
        elif date_released != "keep":
            target.date_released = datetime.strptime(date_released, "%m-%d-%Y")
            target.released_status = "Yes"
        return {"series": target.uid, "date_released": target.date_released and
                target.date_released.strftime("%m-%d-%Y")}

    def _op_withdraw(self, series: str | None = None) -> dict:
        target = self._series_or_raise(series)
        target.visibility = NOT_VISIBLE
        return {"series": target.uid}

    def _op_remove_patient(self, collection: str | None = None,
                           patient: str | None = None) -> dict:
        """The patient's series, studies and images are deleted (series hashes become "")."""
        collection = self._collection_or_raise(collection)
        pid = patient or next(p.patient_id for p in self.patients.values()
                              if p.collection == collection)
        if (pid, collection) not in self.patients:
            raise ValueError(f"no patient {pid!r} in {collection}")
        del self.patients[(pid, collection)]
        gone = [uid for uid, s in self.series.items()
                if s.patient_id == pid and s.collection == collection]
        for uid in gone:
            del self.series[uid]
        for uid in [u for u, s in self.studies.items()
                    if s.patient_id == pid and s.collection == collection]:
            del self.studies[uid]
        return {"patient": pid, "series": gone}

    def _op_rename_collection(self, old: str | None = None, new: str = "") -> dict:
        old = self._collection_or_raise(old)
        if not new:
            raise ValueError("rename_collection needs a new name")
        for table in (self.series.values(), self.studies.values()):
            for row in table:
                if row.collection == old:
                    row.collection = new
        self.patients = {(pid, new if c == old else c): p
                         for (pid, c), p in self.patients.items()}
        for p in self.patients.values():
            if p.collection == old:
                p.collection = new
        return {"old": old, "new": new}

    def _op_set_license(self, collection: str | None = None, name: str = LICENSES[1][0],
                        uri: str = LICENSES[1][1]) -> dict:
        collection = self._collection_or_raise(collection)
        for s in self.series.values():
            if s.collection == collection:
                s.license_name, s.license_uri = name, uri
        return {"collection": collection, "license": name}

    def _op_set_description_uri(self, collection: str | None = None, uri: str = "") -> dict:
        collection = self._collection_or_raise(collection)
        for s in self.series.values():
            if s.collection == collection:
                s.description_uri = uri or f"{s.description_uri}.v2"
        return {"collection": collection}

    def _op_md5_job(self) -> dict:
        return {"collections": self.run_md5_job()}
