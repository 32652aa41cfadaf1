"""``select_images`` against isicarchive's documented semantics (research/peers.md; the
package's ``IsicApi.select_images`` and ``func.selected``): one test per operator and
argument that issue 18 found missing. The reference below is isicarchive's own rule,
applied in plain Python to the documents the mirror holds."""

from __future__ import annotations

import pytest

from mirror import Mirror
from mirror.query import QueryError
from mirror.sources.isic_v1.sandbox import serve
from mirror.sync import SyncOptions, sync

FIELD = "meta.clinical.age_approx"
NULLABLE = "meta.clinical.benign_malignant"  # null for some images of this sandbox


def _get(doc: dict, path: str):
    for key in path.split("."):
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def isicarchive_selected(doc: dict, criteria: list) -> bool:
    """isicarchive's ``func.selected`` for the operators tested here (errors: not selected)."""
    tests = {"==": lambda v, t: v == t, ">=": lambda v, t: v >= t,
             "is None": lambda v, t: v is None, "not is None": lambda v, t: v is not None}
    try:
        return all(tests[op](_get(doc, field), test) for field, op, test in criteria)
    except TypeError:
        return False


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    root = tmp_path_factory.mktemp("select") / "m"
    with serve(images=60, seed=31, private_fraction=0.0) as sb:
        assert sync(root, sb.url, SyncOptions(workers=4, blobs=frozenset())).ok
    with Mirror(root) as m:
        docs = {i: m.image(i).json for i in m.select_images().ids}
        yield m, docs


def _expected(docs: dict, criteria: list, among=None) -> list[str]:
    return sorted(i for i, d in docs.items()
                  if (among is None or i in among) and isicarchive_selected(d, criteria))


@pytest.mark.parametrize("op", ["is None", "not is None"])
def test_is_none_and_not_is_none_ignore_their_value(mirrored, op):
    m, docs = mirrored
    expected = _expected(docs, [[NULLABLE, op, None]])
    assert 0 < len(expected) < len(docs)  # the test can tell the two apart
    for value in (None, "ignored", 0):
        assert list(m.select_images([NULLABLE, op, value]).ids) == expected


def test_sub_select_with_a_list_of_ids_selects_among_them_only(mirrored):
    m, docs = mirrored
    m.select_images([FIELD, ">=", 0])  # a previous selection that must not matter
    among = sorted(docs)[::3]
    where = [NULLABLE, "not is None", None]
    assert list(m.select_images(where, sub_select=among).ids) == _expected(docs, [where], among)


def test_sub_select_with_image_documents_or_a_dict(mirrored):
    m, docs = mirrored
    among = sorted(docs)[1::4]
    where = ["meta.clinical.benign_malignant", "==", "benign"]
    expected = _expected(docs, [where], among)
    assert list(m.select_images(where, sub_select=[docs[i] for i in among]).ids) == expected
    assert list(m.select_images(where, sub_select={i: docs[i] for i in among}).ids) == expected
    with pytest.raises(QueryError, match="sub_select"):
        m.select_images(where, sub_select=[42])


def test_sub_select_true_refines_the_previous_selection(mirrored):
    m, docs = mirrored
    first = [NULLABLE, "not is None", None]
    m.select_images(first)
    second = [FIELD, ">=", 50]
    assert list(m.select_images(second, sub_select=True).ids) == _expected(docs, [first, second])
    m.image_selection = None
    assert len(m.select_images(second, sub_select=True)) == 0  # nothing to refine


def test_add_to_selection_is_a_union(mirrored):
    m, docs = mirrored
    a = ["meta.clinical.benign_malignant", "==", "malignant"]
    b = [NULLABLE, "is None", None]
    m.select_images(a)
    added = m.select_images(b, add_to_selection=True)
    assert list(added.ids) == sorted(set(_expected(docs, [a])) | set(_expected(docs, [b])))
    assert m.image_selection is added


def test_remove_from_selection_is_a_difference(mirrored):
    m, docs = mirrored
    a = [NULLABLE, "not is None", None]
    b = [FIELD, ">=", 40]
    m.select_images(a)
    left = m.select_images(b, remove_from_selection=True)
    assert list(left.ids) == sorted(set(_expected(docs, [a])) - set(_expected(docs, [b])))
    assert len(left) > 0 and "values]" in repr(left)  # a combined selection states its ids
    from mirror.export import metadata_table

    header, rows = metadata_table(m, left)  # exports state the selection again, exactly
    assert [row[header.index("isic_id")] for row in rows] == [docs[i]["name"] for i in left.ids]
    again = m.select_images(["meta.clinical.sex", "==", "male"], sub_select=True)
    assert list(again.ids) == [i for i in left.ids
                               if isicarchive_selected(docs[i], [["meta.clinical.sex", "==",
                                                                  "male"]])]
