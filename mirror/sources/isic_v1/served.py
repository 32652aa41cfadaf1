"""The mirror backend of the ISIC v1 API shape: a synced mirror's index and store.

``mirror serve`` answers ``/api/v1/...`` through :class:`~mirror.sources.isic_v1.shape.V1Api`
over this backend, so a client sees the archive's own routes, paging and errors. Documents
are the stored ones (exactly what the archive served when the mirror synced); files are
the stored files, streamed by the server with their SHA-256 as ETag. What the archive
computes on request and the mirror does not keep (thumbnails of other sizes, segmentation
thumbnails, rendered markups) is drawn from the stored files, so it is not byte-identical
to the archive's; what the mirror lacks entirely (a file role it was synced without) is a
Girder-style 404 naming the ``--blobs`` choice that would fetch it.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterable

import numpy as np
from sqlalchemy import select

from mirror.api import Mirror
from mirror.index import Blob
from mirror.sources.isic_v1.models import Annotation, Dataset, Image, Segmentation, Study
from mirror.sources.isic_v1.shape import ImageQuery, Response, RestError
from mirror.sources.isic_v1.superpixels import load_npz, markup_png, markup_rendered

SORT_COLUMNS = {"_id": Image.id, "name": Image.name, "created": Image.created}
BLOB_OPTION = {"image": "full", "thumbnail": "thumbnail", "superpixels": "superpixels",
               "spidx": "superpixels", "mask": "masks"}
MIRROR_USER = {"_id": "000000000000000000000000", "_modelType": "user", "login": "mirror",
               "firstName": "Mirror", "lastName": "Token", "admin": False, "public": False}


class MirrorBackend:
    """A :class:`~mirror.sources.isic_v1.shape.V1Backend` over one opened :class:`Mirror`.

    ``token``: the one bearer token that may read non-public objects (None: nobody may).
    Studies and annotations carry no visibility of their own in the index; in a mirror
    synced with a login they count as non-public, like everything it holds."""

    def __init__(self, mirror: Mirror, token: str | None = None):
        self.m = mirror
        self.token = token
        self.studies_public = not mirror.config.authenticated

    # -- helpers -----------------------------------------------------------------------------

    def _docs(self, statement) -> list[dict]:
        return [row[0] for row in self.m._all(statement)]

    def _blob(self, object_id: str, role: str) -> Blob:
        rows = self.m._rows(select(Blob).where(Blob.object_id == object_id, Blob.role == role))
        if not rows:
            raise RestError(404, f"The {role} file of {object_id} is not in this mirror; it "
                            f"was synced without --blobs {BLOB_OPTION.get(role, role)}.")
        return rows[0]

    def _file(self, object_id: str, role: str, content_type: str, filename: str | None,
              disposition: str | None) -> Response:
        blob = self._blob(object_id, role)
        return Response.file(self.m.store.path(blob.path), content_type, filename, disposition,
                             sha256=blob.sha256)

    def _rgb(self, image_id: str, role: str = "image") -> np.ndarray:
        from PIL import Image as Pil

        with Pil.open(self.m.store.path(self._blob(image_id, role).path)) as img:
            return np.asarray(img.convert("RGB"))

    def _labels(self, image_id: str) -> np.ndarray:
        return load_npz(self.m.store.path(self._blob(image_id, "spidx").path))

    # -- images ------------------------------------------------------------------------------

    def list_images(self, private: bool, query: ImageQuery) -> list[dict]:
        column = SORT_COLUMNS[query.sort]
        order = column.desc() if query.sortdir == -1 else column.asc()
        what = (Image.doc,) if query.detail else (Image.id, Image.name, Image.updated)
        statement = select(*what).where(Image.removed.is_(False)).order_by(order, Image.id)
        if not private:
            statement = statement.where(Image.public.is_(True))
        if query.ids is not None:
            statement = statement.where(Image.id.in_(sorted(query.ids)))
        if query.name is not None:
            statement = statement.where(Image.name == query.name)
        if query.limit:
            statement = statement.limit(query.limit)
        if query.offset:
            statement = statement.offset(query.offset)
        rows = self.m._all(statement)
        if query.detail:
            return [row[0] for row in rows]
        return [{"_id": i, "name": name, "updated": updated} for i, name, updated in rows]

    def image_details(self, private: bool) -> Iterable[dict]:
        statement = select(Image.doc).where(Image.removed.is_(False)).order_by(Image.id)
        if not private:
            statement = statement.where(Image.public.is_(True))
        return self._docs(statement)

    def image(self, image_id: str) -> tuple[dict, bool] | None:
        row = self.m._one(select(Image.doc, Image.public).where(
            Image.id == image_id, Image.removed.is_(False)))
        return None if row is None else (row[0], bool(row[1]))

    def image_file(self, doc: dict, role: str, disposition: str) -> Response:
        name = doc.get("name")
        if role == "superpixels":
            return self._file(doc["_id"], "superpixels", "image/png",
                              f"{name}_superpixels_v3.0.png", "attachment")
        blob = self._blob(doc["_id"], "image")
        return Response.file(self.m.store.path(blob.path), blob.content_type or "image/jpeg",
                             f"{name}.jpg", disposition, sha256=blob.sha256)

    def thumbnail(self, doc: dict, box: int) -> Response:
        """The stored thumbnail at the archive's default box (256); another box is drawn
        from the stored image (Pillow, not the archive's resampling)."""
        if box == 256:
            try:
                return self._file(doc["_id"], "thumbnail", "image/jpeg", None, None)
            except RestError:
                pass
        from PIL import Image as Pil

        img = Pil.fromarray(self._rgb(doc["_id"]))
        scale = min(box / img.width, box / img.height)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Pil.BILINEAR)
        return Response.file(_jpeg(img), "image/jpeg")

    # -- segmentations -------------------------------------------------------------------------

    def segmentations(self, image_id: str) -> list[dict]:
        return self._docs(select(Segmentation.doc).where(
            Segmentation.image_id == image_id, Segmentation.removed.is_(False))
            .order_by(Segmentation.id))

    def segmentation(self, seg_id: str) -> dict | None:
        row = self.m._one(select(Segmentation.doc).where(
            Segmentation.id == seg_id, Segmentation.removed.is_(False)))
        return None if row is None else row[0]

    def mask(self, seg: dict, image: dict, disposition: str) -> Response:
        return self._file(seg["_id"], "mask", "image/png",
                          f"{image.get('name')}_segmentation.png", disposition)

    def segmentation_thumbnail(self, seg: dict, image: dict, width: int,
                               disposition: str) -> Response:
        """The stored image at ``width`` with the stored mask's outline in green."""
        from PIL import Image as Pil

        from mirror.sources.isic_v1.overlay import outline_mask

        rgb = Pil.fromarray(self._rgb(image["_id"]))
        size = (width, max(1, round(rgb.height * width / rgb.width)))
        with Pil.open(self.m.store.path(self._blob(seg["_id"], "mask").path)) as mask:
            inside = np.asarray(mask.convert("L").resize(size, Pil.NEAREST)) > 0
        drawn = outline_mask(np.asarray(rgb.resize(size, Pil.BILINEAR)), inside, width=1)
        return Response.file(_jpeg(Pil.fromarray(drawn)), "image/jpeg",
                             f"{image.get('name')}_segmentation.jpg", disposition)

    # -- datasets ------------------------------------------------------------------------------

    def datasets(self, private: bool) -> list[dict]:
        statement = select(Dataset.doc).where(Dataset.removed.is_(False)).order_by(Dataset.id)
        if not private:
            statement = statement.where(Dataset.public.is_(True))
        return self._docs(statement)

    def dataset(self, dataset_id: str) -> tuple[dict, bool] | None:
        row = self.m._one(select(Dataset.doc, Dataset.public).where(
            Dataset.id == dataset_id, Dataset.removed.is_(False)))
        return None if row is None else (row[0], bool(row[1]))

    def dataset_detail(self, doc: dict) -> dict:
        return doc  # the mirror keeps the detail the archive served (detail=true)

    # -- studies and annotations -----------------------------------------------------------------

    def studies(self, private: bool) -> list[dict]:
        if not (private or self.studies_public):
            return []
        return self._docs(select(Study.doc).where(Study.removed.is_(False)).order_by(Study.id))

    def study(self, study_id: str) -> tuple[dict, bool] | None:
        row = self.m._one(select(Study.doc).where(Study.id == study_id,
                                                  Study.removed.is_(False)))
        return None if row is None else (row[0], self.studies_public)

    def annotations(self, study_id: str) -> list[dict]:
        return self._docs(select(Annotation.doc).where(
            Annotation.study_id == study_id, Annotation.removed.is_(False))
            .order_by(Annotation.id))

    def annotation(self, annotation_id: str) -> dict | None:
        row = self.m._one(select(Annotation.doc).where(
            Annotation.id == annotation_id, Annotation.removed.is_(False)))
        return None if row is None else row[0]

    def markup_values(self, annotation: dict, feature: str) -> list[float]:
        """The stored values; an unmarked feature is all zeros, one per superpixel."""
        if (annotation.get("markups") or {}).get(feature):
            stored = self.m._blob_json(annotation["_id"], "markups")
            values = ((stored or {}).get("markups") or {}).get(feature)
            if values is None:
                raise RestError(404, f"The markups of annotation {annotation['_id']} are not "
                                "in this mirror; sync it with --what including annotations.")
            return values
        image_id = (annotation.get("image") or {}).get("_id") or ""
        return [0.0] * (int(self._labels(image_id).max()) + 1)

    def markup_file(self, annotation: dict, feature: str, values: list[float],
                    rendered: bool, name: str, disposition: str) -> Response:
        image_id = (annotation.get("image") or {}).get("_id") or ""
        labels = self._labels(image_id)
        if rendered:
            return Response.file(markup_rendered(self._rgb(image_id), labels, values),
                                 "image/jpeg", name, disposition)
        return Response.file(markup_png(labels, values), "image/png", name, disposition)

    # -- users ---------------------------------------------------------------------------------

    def login(self, login: str, password: str) -> dict | None:
        """A mirror holds no accounts: every login fails, as for a wrong password."""
        return None

    def user_for_token(self, token: str | None) -> dict | None:
        if self.token and token and secrets.compare_digest(token, self.token):
            return MIRROR_USER
        return None


def _jpeg(img) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def holds_private(mirror: Mirror) -> bool:
    """True when the mirror may hold objects an anonymous caller must not see: it was
    synced with a login, or some image or dataset is marked non-public."""
    if mirror.config.authenticated:
        return True
    for model in (Image, Dataset):
        if mirror._one(select(model.id).where(model.public.is_(False)).limit(1)) is not None:
            return True
    return False


def make_api(mirror: Mirror, token: str | None):
    """The ISIC v1 face ``mirror serve`` mounts at :data:`API_ROOT` for this mirror."""
    from mirror.sources.isic_v1.shape import V1Api

    api = V1Api(MirrorBackend(mirror, token))
    api.accepts_bearer = True
    api.face = "This mirror"
    api.instead = (" Select with the browse page (/) or 'mirror query --where FIELD OP VALUE' "
                   "on the mirror's host.")
    return api


API_ROOT = "/api/v1"


# -- the browse page's pictures ---------------------------------------------------------------

OVERLAY_WIDTH = 512  # pixels: big enough to see a lesion's outline, small to send
SUPERPIXEL_EDGE = (255, 0, 255)  # magenta: no skin or lesion colour comes close


def overlays(mirror: Mirror, kind: str, object_id: str) -> list[tuple[str, str]]:
    """(name, title) of the overlays the object page shows for an image."""
    if kind != "image":
        return []
    roles = {r[0] for r in mirror._all(select(Blob.role).where(Blob.object_id == object_id))}
    if "image" not in roles and "thumbnail" not in roles:
        return []
    shown = []
    if _first_mask(mirror, object_id) is not None:
        shown.append(("mask", "segmentation mask (green outline)"))
    if "spidx" in roles:
        shown.append(("superpixels", "superpixels (magenta edges)"))
    return shown


def _first_mask(mirror: Mirror, image_id: str) -> str | None:
    row = mirror._one(select(Blob.path).join(Segmentation, Segmentation.id == Blob.object_id)
                      .where(Segmentation.image_id == image_id, Blob.role == "mask",
                             Segmentation.removed.is_(False)).order_by(Segmentation.id).limit(1))
    return None if row is None else row[0]


def overlay_png(mirror: Mirror, image_id: str, name: str) -> bytes | None:
    """The image at :data:`OVERLAY_WIDTH` with its first mask outlined, or its superpixel
    edges drawn (:mod:`mirror.sources.isic_v1.overlay`), as PNG."""
    from PIL import Image as Pil

    from mirror.sources.isic_v1.overlay import outline_mask

    if name not in ("mask", "superpixels"):
        return None
    backend = MirrorBackend(mirror)
    try:
        rgb = Pil.fromarray(backend._rgb(image_id))
    except RestError:
        rgb = Pil.fromarray(backend._rgb(image_id, "thumbnail"))
    size = (OVERLAY_WIDTH, max(1, round(rgb.height * OVERLAY_WIDTH / rgb.width)))
    base = np.asarray(rgb.resize(size, Pil.BILINEAR))
    if name == "mask":
        path = _first_mask(mirror, image_id)
        if path is None:
            return None
        with Pil.open(mirror.store.path(path)) as mask:
            inside = np.asarray(mask.convert("L").resize(size, Pil.NEAREST)) > 0
        drawn = outline_mask(base, inside, width=3)
    else:
        labels = np.asarray(Pil.fromarray(backend._labels(image_id)).resize(size, Pil.NEAREST))
        edge = np.zeros(labels.shape, bool)
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        drawn = base.copy()
        drawn[edge] = SUPERPIXEL_EDGE
    out = io.BytesIO()
    Pil.fromarray(drawn).save(out, "PNG")
    return out.getvalue()
