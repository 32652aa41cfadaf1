"""select_images semantics: every operator, compiled to DuckDB over the projection, agrees
with a plain Python filter."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import mirror.projection
from mirror.config import utc_now
from mirror.index.database import IndexWriter
from mirror.ingest import ingest_documents, mark_removed
from mirror.layout import Layout
from mirror.query import (
    OPERATORS,
    Criterion,
    QueryError,
    criteria,
    open_projection,
    parse_where,
    select_ids,
)
from mirror.sources.isic_v1.models import Image
from mirror.sources.isic_v1.spec import SPEC

IMAGE = SPEC.kind("image")

LONG = "x" * 210  # long text (a dataset description) is a value like any other
WORDS = ["melanoma", "nevus", "Nevus", "mel", "", "a b", "ISBI 2017: Training", LONG,
         LONG + "melanoma"]
PATHS = ["a", "b.c", "b.d", "tags", "s", "b", "missing.path"]


# -- the reference: the documented semantics, in plain Python ------------------------------

def get(doc, path):
    for key in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    return "num" if isinstance(v, (int, float)) else type(v).__name__


def eq(v, t):
    return kind(v) == kind(t) and v == t


def order(v, op, t):
    if kind(v) != kind(t) or kind(t) not in ("num", "str"):
        return False
    return {"<": v < t, "<=": v <= t, ">": v > t, ">=": v >= t}[op]


def contains(v, t):
    in_list = isinstance(v, list) and any(eq(e, t) for e in v)
    return in_list or (isinstance(v, str) and isinstance(t, str) and t in v)


def holds(doc, field, op, t):
    v = get(doc, field)
    if op in ("==", "is"):
        return eq(v, t)
    if op in ("!=", "is not"):
        return not eq(v, t)
    if op in ("<", "<=", ">", ">="):
        return order(v, op, t)
    if op == "in":
        return any(eq(v, x) for x in t)
    if op == "not in":
        return not any(eq(v, x) for x in t)
    if op == "ni":
        return contains(v, t)
    if op == "not ni":
        return (isinstance(v, list) or (isinstance(v, str) and isinstance(t, str))) \
            and not contains(v, t)
    if op == "~":
        return isinstance(v, str) and re.search(t, v) is not None
    assert op == "!~"
    return isinstance(v, str) and re.search(t, v) is None


# -- a varied index ------------------------------------------------------------------------

def scalar(rng):
    return rng.choice([None, True, False, 0, 1, 2.5, -3, 60, rng.choice(WORDS)])


def value(rng):
    roll = rng.random()
    if roll < 0.15:
        return [scalar(rng) for _ in range(rng.randrange(4))]
    if roll < 0.2:
        return {"x": scalar(rng)}
    return scalar(rng)


def make_doc(rng, i):
    doc = {"_id": f"{i:024x}", "name": f"ISIC_{i:07d}"}
    for path in ("a", "s", "tags"):
        if rng.random() < 0.85:
            doc[path] = value(rng)
    if rng.random() < 0.8:
        doc["b"] = {k: value(rng) for k in ("c", "d") if rng.random() < 0.8}
    return doc


def published(writer: IndexWriter):
    """The projection of the generation the writer publishes now."""
    return open_projection(writer.layout.index_dir, writer.publish())


def ingest(writer: IndexWriter, docs: list[dict]) -> None:
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in docs], utc_now())


@pytest.fixture(scope="module", params=[None, 7], ids=["one-part", "parts-of-7"])
def index(tmp_path_factory, request):
    """Varied documents (every path holds text, numbers, booleans, lists, objects and
    nulls), published, and their projection opened; built in one part, and in parts of
    7 rows, where each part holds other kinds of values at a path (and lists with elements
    of other kinds) than the next."""
    rng = random.Random(7)
    docs = [make_doc(rng, i) for i in range(400)]
    docs[0].update(a="melanoma", tags=["ISBI 2017: Training", 1, True])
    docs[1].update(s=LONG + "melanoma", b={"c": 60, "d": None})
    root = tmp_path_factory.mktemp("query")
    writer = IndexWriter(Layout(root / "mirror"), spec=SPEC)
    ingest(writer, docs)
    with pytest.MonkeyPatch.context() as patch:
        if request.param:
            patch.setattr(mirror.projection, "PART", request.param)
        projection = published(writer)
    yield projection, docs
    projection.close()
    writer.close()


def brute(docs, items):
    return sorted(d["_id"] for d in docs if all(holds(d, c.field, c.op, c.value) for c in items))


def check(index, items):
    projection, docs = index
    parsed = criteria(items)
    assert select_ids(projection, parsed) == brute(docs, parsed), [str(c) for c in parsed]


# -- tests ---------------------------------------------------------------------------------

OPERATOR_CASES = [
    ["a", "==", "melanoma"], ["a", "==", 60], ["a", "==", 60.0], ["a", "==", True],
    ["a", "==", None], ["a", "!=", "melanoma"], ["a", "!=", None], ["a", "<", 10],
    ["a", ">=", "m"], ["a", "<=", "nevus"], ["a", ">", -3], ["b.c", "in", ["nevus", 0, None]],
    ["b.c", "not in", ["nevus", 0]], ["tags", "ni", "ISBI 2017: Training"], ["tags", "ni", 1],
    ["tags", "ni", True], ["s", "ni", "melanoma"], ["s", "not ni", "mel"],
    ["tags", "not ni", "mel"], ["s", "~", "^mel"], ["s", "~", "oma$"], ["s", "!~", "N"],
    ["a", "is", True], ["a", "is", None], ["a", "is not", None], ["b", "==", None],
    ["missing.path", "==", None], ["missing.path", "!=", 1], ["s", "==", LONG],
    ["s", ">", "x"], ["name", "<", "ISIC_0000010"], ["b.d", "in", []],
]


@pytest.mark.parametrize("item", OPERATOR_CASES)
def test_every_operator_agrees_with_the_python_reference(index, item):
    check(index, [item])


def test_pairs_of_criteria_agree(index):
    for first, second in zip(OPERATOR_CASES, OPERATOR_CASES[5:] + OPERATOR_CASES[:5],
                             strict=True):
        check(index, [first, second])


def test_the_examples_hold(index):
    projection, docs = index
    assert docs[0]["_id"] in select_ids(projection, [["tags", "ni", "ISBI 2017: Training"]])
    assert docs[1]["_id"] in select_ids(projection, [["s", "~", "melanoma$"]])  # long text
    assert docs[1]["_id"] in select_ids(projection, [["b.d", "is", None], ["b.c", ">=", 60]])
    assert docs[1]["_id"] not in select_ids(projection, [["b.c", "==", "60"]])  # types matter


criterion_strategy = st.builds(
    lambda field, op, scalar_value, values: [
        field, op,
        values if op in ("in", "not in") else
        scalar_value if op not in ("~", "!~") else re.escape(str(scalar_value))[:5]],
    st.sampled_from(PATHS),
    st.sampled_from([o for o in OPERATORS if o not in ("is", "is not")]),
    st.one_of(st.sampled_from(WORDS), st.integers(-5, 70), st.sampled_from([True, False, 2.5])),
    st.lists(st.one_of(st.none(), st.sampled_from(WORDS), st.integers(-3, 3)), max_size=3),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(criterion_strategy, min_size=1, max_size=3))
def test_random_criteria_agree_with_the_python_reference(index, items):
    valid = []
    for item in items:
        try:
            valid += criteria([item])
        except QueryError:
            continue  # e.g. '<' with a boolean: refused, tested below
    if valid:
        check(index, valid)


def test_removed_images_are_not_selected(tmp_path):
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    docs = [{"_id": f"{i:024x}", "name": f"ISIC_{i}", "a": 1} for i in range(3)]
    ingest(writer, docs)
    before = published(writer)
    with writer.session() as session:
        mark_removed(session, IMAGE, [docs[1]["_id"]], utc_now())
    after = published(writer)
    for where in ([["a", "==", 1]], [["a", "!=", 2]]):
        assert select_ids(after, where) == [docs[0]["_id"], docs[2]["_id"]]
        assert len(select_ids(before, where)) == 3  # generation 1 keeps what it had
    with writer.session() as session:  # the image is still in the index, for snapshots
        assert session.get(Image, docs[1]["_id"]).removed
    before.close()
    after.close()
    writer.close()


@pytest.mark.parametrize("text, expected", [
    ("meta.clinical.diagnosis == melanoma", ["meta.clinical.diagnosis", "==", "melanoma"]),
    ("meta.clinical.age_approx>=60", ["meta.clinical.age_approx", ">=", 60]),
    ("meta.unstructured.biopsy done == Y", ["meta.unstructured.biopsy done", "==", "Y"]),
    ("notes.tags ni ISBI 2017: Training", ["notes.tags", "ni", "ISBI 2017: Training"]),
    ("meta.clinical.melanocytic is true", ["meta.clinical.melanocytic", "is", True]),
    ("meta.clinical.sex is not null", ["meta.clinical.sex", "is not", None]),
    ('meta.clinical.sex == "true"', ["meta.clinical.sex", "==", "true"]),
    ("meta.clinical.sex in male, female", ["meta.clinical.sex", "in", ["male", "female"]]),
    ('dataset.name in ["HAM10000", 5]', ["dataset.name", "in", ["HAM10000", 5]]),
    ("name ~ ^ISIC_00", ["name", "~", "^ISIC_00"]),
    ("name match ^ISIC", ["name", "~", "^ISIC"]),
    ("size < 1.5", ["size", "<", 1.5]),
])
def test_where_strings_parse_as_documented(text, expected):
    assert parse_where(text) == Criterion(*expected)


@pytest.mark.parametrize("bad, message", [
    (["a", "like", "x"], "unknown operator 'like'"),
    (["a", "<", True], "needs a number or a string"),
    (["a", "in", "x"], "needs a list"),
    (["a", "~", "("], "bad regular expression"),
    (["a", "is", 5], "true, false or null"),
    (["", "==", 1], "bad field"),
    (["a..b", "==", 1], "bad field"),
    (['a"b', "==", 1], "bad field"),
    (["a\x00", "==", 1], "bad field"),
    (["a", "==", {"x": 1}], "needs a string, number"),
    ([1, 2], "bad criterion"),
])
def test_malformed_criteria_are_refused_clearly(bad, message):
    with pytest.raises(QueryError, match=re.escape(message)):
        criteria([bad])


def test_where_without_an_operator_is_refused():
    with pytest.raises(QueryError, match="FIELD OP VALUE"):
        parse_where("meta.clinical.diagnosis melanoma")


@pytest.mark.parametrize("attack", [
    "x' OR '1'='1", "'; DROP TABLE images; --", "a\") OR 1=1 --", "%", "_", "\\",
])
def test_injection_attempts_are_just_values(index, attack):
    projection, docs = index
    for item in (["a", "==", attack], ["a", "~", re.escape(attack)], ["tags", "ni", attack],
                 ["a", "in", [attack]], [f"b.{attack}".replace('"', ""), "==", 1]):
        try:
            parsed = criteria([item])
        except QueryError:
            continue
        assert select_ids(projection, parsed) == brute(docs, parsed)
    assert len(select_ids(projection)) == len(docs)  # still there


@pytest.mark.parametrize("item", [["s", "~", "^mel"], ["a", "!~", "a"], ["s", "~", "oma$"],
                                  ["name", "~", "[0-8]$"], ["name", "~", "ISIC"],
                                  ["name", "!~", "[0-8]$"], ["a", "~", "."]])
def test_regex_matching_few_most_or_all_values_agrees(index, item):
    """A regex selects by the values it matches, or by the ones it does not when they are
    fewer, or by presence when it matches all."""
    check(index, [item])


def test_same_field_ranges_merge_but_list_elements_do_not(index):
    check(index, [["b.c", ">=", 0], ["b.c", "<", 61]])
    check(index, [["tags", "ni", 1], ["tags", "ni", True]])  # two different elements
    projection, docs = index
    both = [d["_id"] for d in docs
            if isinstance(d.get("tags"), list) and any(eq(e, 1) for e in d["tags"])
            and any(eq(e, True) for e in d["tags"])]
    assert docs[0]["_id"] in both


def test_integers_beyond_a_float_are_indexed_in_order(tmp_path):
    """JSON integers have no size limit: one beyond a float's range is indexed as +-inf
    (still ordered against every number), not a crash of the sync; its INTEGER column
    copy is left empty (PostgreSQL's INTEGER is 32 bits)."""
    big = 10**400
    docs = [{"_id": f"{i:024x}", "age_approx": v, "meta": {"clinical": {"age_approx": v}}}
            for i, v in enumerate([big, -big, 5, 3_000_000_000])]
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    ingest(writer, docs)
    projection = published(writer)
    for where, expected in ([["age_approx", ">", 6]], [0, 3]), \
            ([["age_approx", "<", 0]], [1]), ([["age_approx", "<=", 5]], [1, 2]):
        got = select_ids(projection, criteria(where))
        assert got == [docs[i]["_id"] for i in expected], where
    with writer.engine.connect() as conn:
        ages = dict(conn.execute(select(Image.id, Image.age_approx)).all())
    assert list(ages.values()) == [None, None, 5, None]
    projection.close()
    writer.close()


@pytest.mark.parametrize("value", [10**400, float("inf"), float("nan"), [1, float("-inf")]])
def test_numbers_no_index_can_hold_are_refused_in_criteria(value):
    op = "in" if isinstance(value, list) else ">"
    with pytest.raises(QueryError, match="NaN, infinite or beyond a float's range"):
        criteria([["meta.clinical.age_approx", op, value]])


def test_integer_columns_compare_with_fractions_and_lists_of_one_kind(tmp_path):
    """A field holding only integers is a BIGINT column: a fraction still compares as a
    number (2 < 2.5, 2 != 2.5); a list of only numbers still answers text and booleans."""
    docs = [{"_id": f"{i:024x}", "name": f"ISIC_{i}", "n": i, "tags": [i, i + 1]}
            for i in range(5)]
    writer = IndexWriter(Layout(tmp_path / "m"), spec=SPEC)
    ingest(writer, docs)
    projection = published(writer)
    for where in (["n", "==", 2.5], ["n", "<", 2.5], ["n", ">=", 2.5], ["n", "in", [2.0, 9]],
                  ["n", "!=", 2.0], ["tags", "ni", 2.0], ["tags", "ni", True],
                  ["tags", "not ni", "2"], ["n", "~", "2"], ["n", "!~", "2"]):
        parsed = criteria([where])
        assert select_ids(projection, parsed) == brute(docs, parsed), where
    projection.close()
    writer.close()


@pytest.mark.parametrize("item", [["missing.path", "~", ""], ["a", "~", "x*"], ["a", "!~", "^$"],
                                  ["s", "!~", ""], ["a", "~", "(?i)NEVUS"], ["s", "~", r"\bb"]])
def test_patterns_that_match_the_empty_string_never_select_a_missing_field(index, item):
    check(index, [item])
