"""The offline Python API over a sandbox-synced mirror."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mirror import Mirror
from mirror.errors import MissingObjectError
from mirror.sources.isic_v1.overlay import annotation_overlay, boundary, outline_mask, save_png
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    root = tmp_path_factory.mktemp("api") / "mirror"
    with serve(images=12, seed=17, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(workers=4)).ok
    with Mirror(root) as mirror:
        yield mirror


def test_image_by_name_and_by_id(m):
    img = m.image("ISIC_0000000")
    same = m.image(img.id)
    assert same.name == "ISIC_0000000" and same.json == img.json
    assert img.meta == img.json["meta"]
    assert img.path.name == f"image_{img.id}_ISIC_0000000.jpg"
    assert img.data.shape == (*img.shape, 3) and img.data.dtype == np.uint8
    assert max(img.thumbnail().shape[:2]) == 256
    assert m.images()[0] == "ISIC_0000000" and len(m.images()) == 12


def test_unknown_names_and_missing_files_say_what_to_do(m, tmp_path):
    with pytest.raises(KeyError, match="no image 'ISIC_9999999'.*mirror sync"):
        m.image("ISIC_9999999")
    with pytest.raises(MissingObjectError, match="no study"):
        m.study("nope")
    root = tmp_path / "meta-only"
    with serve(images=2, seed=17, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(blobs=frozenset({"thumbnail"}))).ok
    with Mirror(root) as meta_only:
        img = meta_only.image("ISIC_0000000")
        assert img.meta  # metadata is there
        with pytest.raises(MissingObjectError,
                           match="image file .* not mirrored.*--blobs including full$"):
            _ = img.path
        with pytest.raises(MissingObjectError, match="--blobs including superpixels$"):
            _ = img.superpixels


def test_superpixels_come_from_the_npz_with_isicarchive_map(m):
    img = m.image("ISIC_0000001")
    sp = img.superpixels
    idx, spmap = sp["idx"], sp["map"]
    assert idx.dtype == np.int32 and idx.shape == img.shape == sp["shp"]
    assert sp["max"] == idx.max() and spmap.shape[0] == idx.max() + 1
    flat = idx.ravel()
    for k in (0, sp["max"] // 2, sp["max"]):
        assert np.array_equal(spmap[k, :spmap[k, -1]], np.flatnonzero(flat == k))
    assert spmap[:, -1].sum() == idx.size


def test_segmentation_masks(m):
    img = m.image("ISIC_0000002")
    segs = img.segmentations
    assert segs and all(s.image is img for s in segs)
    good = [s for s in segs if not s.failed]
    mask = good[0].mask()
    assert mask.dtype == bool and mask.shape == img.shape and 0 < mask.mean() < 1
    for s in segs:
        if s.failed:
            with pytest.raises(MissingObjectError, match="failed"):
                s.mask()


def test_dataset_carries_license_and_images(m):
    img = m.image("ISIC_0000003")
    ds = m.dataset(img.json["dataset"]["name"])
    assert ds.license == img.json["dataset"]["license"]
    assert "ISIC_0000003" in ds.images


def test_study_annotations_markups_and_masks(m):
    study = m.study(m.studies()[0])
    assert study.images and study.features and study.questions
    bulk = study.load_annotations()  # one file for the whole study
    assert bulk and m._blob_json(study.id, "markups") is not None
    one_by_one = {a.id: a.markups for a in study.annotations if a.markups}
    assert bulk.keys() == one_by_one.keys()
    assert all(np.array_equal(bulk[a][f], one_by_one[a][f]) for a in bulk for f in bulk[a])
    annotation = next(a for a in study.annotations if a.id in bulk and bulk[a.id])
    feature, values = next(iter(annotation.markups.items()))
    img = annotation.image
    assert values.size == img.superpixels["max"] + 1
    mask = annotation.feature_mask(feature)
    assert np.array_equal(mask, values[img.superpixels["idx"]] >= 0.5) and mask.any()
    definite = annotation.feature_mask(feature, threshold=1.0)
    assert definite.sum() <= mask.sum()
    with pytest.raises(MissingObjectError, match="no markup"):
        annotation.feature_mask("Not : A feature")


def test_overlays_are_pictures(m, tmp_path):
    img = m.image("ISIC_0000002")
    mask = next(s for s in img.segmentations if not s.failed).mask()
    drawn = outline_mask(img.data, mask)
    changed = (drawn != img.data).any(axis=2)
    assert changed.any() and not (changed & ~boundary(mask)).any()
    path = save_png(drawn, tmp_path / "seg.png")
    with Image.open(io.BytesIO(path.read_bytes())) as png:
        assert png.size == (img.shape[1], img.shape[0])
    study = m.study(m.studies()[0])
    annotation = next(a for a in study.annotations if a.markups)
    feature = next(iter(annotation.markups))
    picture = annotation_overlay(annotation, feature)
    assert picture.shape == annotation.image.data.shape
    assert (picture != annotation.image.data).any()
