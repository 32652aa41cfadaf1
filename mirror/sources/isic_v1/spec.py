"""What ISIC API v1 holds, declared for the engine (see :mod:`mirror.sources.base`).

Kinds: datasets → images → segmentations; studies → annotations (and their markups).
Ids are Girder ObjectIds (24 hex digits) that end in a counter, so the last hex digit
spreads objects evenly over the 16 shard folders. Files keep isicarchive's cache names
(``image_<id>_<name>.jpg``, ``spimg_<id>.png``...), so a mirror is also a valid
isicarchive cache. The superpixel PNG is decoded once on arrival (to check it is this
image's label image) and its labels are kept as ``spidx_<id>.npz``, a derivation.
"""

from __future__ import annotations

import re
from pathlib import Path

from mirror.sources.base import (
    Derived,
    FileRole,
    FileTask,
    KindSpec,
    SourceSpec,
    shard_by_hex_suffix,
)
from mirror.sources.isic_v1 import models, projection

JPEG, PNG, BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"
OBJECT_ID = re.compile(r"[0-9a-f]{24}")
DEFAULT_URL = "https://isic-archive.com/api/v1"


def _check_superpixels(path: Path, task: FileTask):
    """Decode the label PNG against the image's size: a wrong size or mode must not become
    a stray file, nor be adopted by the next run. The labels feed the derivation."""
    from mirror.sources.isic_v1.superpixels import decode_png

    return decode_png(path, expected_shape=task.shape)


def _check_dimensions(path: Path, task: FileTask) -> None:
    """A full image or mask must declare the image's size (a full image may be its
    transpose: EXIF orientation) and stay under MIRROR_MAX_DECODE_PIXELS: a file that
    would decode to gigabytes is refused on arrival, reading its header only."""
    from mirror.sources.isic_v1.pixels import open_checked

    open_checked(path, task.shape, f"{task.role} file",
                 transposed_ok=task.role == "image").close()


def _derive_spidx(task: FileTask, labels, path: Path) -> list[Derived]:
    from mirror.sources.isic_v1.superpixels import decode_png, encode_npz

    if labels is None:  # an adopted file that was not decoded on arrival
        labels = decode_png(path, expected_shape=task.shape)
    return [Derived("spidx", encode_npz(labels), ".npz", "application/x-npz")]


def _kind(name: str, table: str, model, columns, **more) -> KindSpec:
    return KindSpec(name=name, table=table, id_pattern=OBJECT_ID, shard=shard_by_hex_suffix,
                    model=model, columns=columns, **more)


# the columns of 'mirror export metadata' (isic-cli's) and the image fields they show
EXPORT_COLUMNS = (("isic_id", "name"), ("image_id", "_id"), ("attribution", "dataset.attribution"),
                  ("copyright_license", "dataset.license"), ("license", "dataset.license"),
                  ("dataset", "dataset.name"))

KINDS = (
    _kind("dataset", "datasets", models.Dataset, projection.dataset_columns),
    _kind("image", "images", models.Image, projection.image_columns, parent="dataset",
          aliases=EXPORT_COLUMNS, references=("dataset._id",)),
    _kind("segmentation", "segmentations", models.Segmentation,
          projection.segmentation_columns, parent="image", references=("imageId",)),
    _kind("study", "studies", models.Study, projection.study_columns,
          index=projection.index_studies),
    _kind("annotation", "annotations", models.Annotation, projection.annotation_columns,
          parent="study", references=("studyId", "image._id", "user._id")),
)

ROLES = (
    FileRole("image", "image", "full", (JPEG, PNG, BMP), whole=True, named=True,
             validate=_check_dimensions, bytes_per_pixel=0.35),
    FileRole("thumbnail", "thumb", "thumbnail", (JPEG, PNG), whole=True, bytes_per_pixel=0,
             fixed_bytes=20_000),
    FileRole("superpixels", "spimg", "superpixels", (PNG,), whole=True, exts=(".png",),
             validate=_check_superpixels, derive=_derive_spidx, bytes_per_pixel=0.12),
    FileRole("spidx", "spidx", None, (b"PK\x03\x04",), exts=(".npz",),
             derived_from="superpixels", exported=False),
    FileRole("mask", "mask", "masks", (PNG,), whole=True, exts=(".png",),
             validate=_check_dimensions, bytes_per_pixel=0.01),
    FileRole("markups", "markup", None, exts=(".json.zst",), exported=False),
)

SPEC = SourceSpec(
    name="isic-v1",
    archive="isic",
    api="v1",
    title="ISIC Archive API v1",
    namespace="isic",
    organization="International Skin Imaging Collaboration (ISIC Archive)",
    url_pattern=re.compile(r"/api/v1/?$"),
    kinds=KINDS,
    roles=ROLES,
    main_kind="image",
    parts=frozenset({"images", "datasets", "segmentations", "studies", "annotations"}),
    file_options=frozenset({"full", "thumbnail", "superpixels", "masks"}),
    default_url=DEFAULT_URL,
    source="mirror.sources.isic_v1.source:IsicV1Source",
    sandbox="mirror.sources.isic_v1.sandbox.server:run_forever",
    links=projection.study_image_links,
    groups=(("datasets", "datasets", "name", "dataset._id"),
            ("studies", "studies", "name", None)),
)
