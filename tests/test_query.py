"""select_images semantics: every operator in SQL agrees with a plain Python filter."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import mirror.valueruns
import mirror.valuesets
from mirror.config import utc_now
from mirror.fields import MAX_INDEXED_TEXT
from mirror.index import ImageField
from mirror.index.database import IndexWriter
from mirror.ingest import ingest_documents, mark_removed
from mirror.layout import Layout
from mirror.query import OPERATORS, Criterion, QueryError, criteria, parse_where, select_ids
from mirror.sources.isic_v1.models import Image
from mirror.sources.isic_v1.spec import SPEC
from mirror.valuesets import is_fresh, kinds_at, refresh

IMAGE = SPEC.kind("image")

LONG = "x" * (MAX_INDEXED_TEXT + 10)
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


@pytest.fixture(scope="module", params=["image_fields", "value_sets", "value_runs"])
def index(tmp_path_factory, request):
    """The same documents, queried through image_fields alone (value sets stale, as in a
    writer's working database), through fresh value sets (as in a published index), and
    with every field that has more than 8 values in value runs of 5 values (as names and
    dates are in a real index): many runs, most of them cut by a range."""
    rng = random.Random(7)
    docs = [make_doc(rng, i) for i in range(400)]
    docs[0].update(a="melanoma", tags=["ISBI 2017: Training", 1, True])
    docs[1].update(s=LONG + "melanoma", b={"c": 60, "d": None})
    root = tmp_path_factory.mktemp("query")
    writer = IndexWriter(Layout(root / "mirror"))
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in docs], utc_now())
    if request.param != "image_fields":
        small = request.param == "value_runs"
        with pytest.MonkeyPatch.context() as patch, writer.session() as session:
            patch.setattr(mirror.valuesets, "MIN_MAX_VALUES", 8 if small else 1000)
            patch.setattr(mirror.valueruns, "RUN", 5 if small else 1024)
            assert refresh(session)
    with writer.engine.connect() as conn:
        assert is_fresh(conn) == (request.param != "image_fields")
        if request.param == "value_runs":
            assert {p for p in PATHS if (k := kinds_at(conn, p)) and k[1]} >= {"a", "s", "b.c"}
        yield conn, docs
    writer.close()


def brute(docs, items):
    return sorted(d["_id"] for d in docs if all(holds(d, c.field, c.op, c.value) for c in items))


def check(index, items):
    conn, docs = index
    parsed = criteria(items)
    assert select_ids(conn, parsed) == brute(docs, parsed), [str(c) for c in parsed]


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
    conn, docs = index
    assert docs[0]["_id"] in select_ids(conn, [["tags", "ni", "ISBI 2017: Training"]])
    assert docs[1]["_id"] in select_ids(conn, [["s", "~", "melanoma$"]])  # long text
    assert docs[1]["_id"] in select_ids(conn, [["b.d", "is", None], ["b.c", ">=", 60]])
    assert docs[1]["_id"] not in select_ids(conn, [["b.c", "==", "60"]])  # types matter


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


@pytest.mark.parametrize("method", ["sql", "sets"])
def test_removed_images_are_not_selected(tmp_path, method):
    writer = IndexWriter(Layout(tmp_path / "m"))
    docs = [{"_id": f"{i:024x}", "name": f"ISIC_{i}", "a": 1} for i in range(3)]
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in docs], utc_now())
    with writer.session() as session:
        refresh(session)
        mark_removed(session, IMAGE, [docs[1]["_id"]], utc_now())
    with writer.engine.connect() as conn:
        assert not is_fresh(conn)  # the removal made the sets stale
    with writer.session() as session:
        assert refresh(session)
    with writer.engine.connect() as conn:
        for where in ([["a", "==", 1]], [["a", "!=", 2]]):
            assert select_ids(conn, where, method=method) == [docs[0]["_id"], docs[2]["_id"]]
    with writer.session() as session:  # the image is still in the index, for snapshots
        assert session.get(Image, docs[1]["_id"]).removed
        assert not session.query(ImageField).filter_by(image_id=docs[1]["_id"]).count()
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
    conn, docs = index
    for item in (["a", "==", attack], ["a", "~", re.escape(attack)], ["tags", "ni", attack],
                 ["a", "in", [attack]], [f"b.{attack}".replace('"', ""), "==", 1]):
        try:
            parsed = criteria([item])
        except QueryError:
            continue
        assert select_ids(conn, parsed) == brute(docs, parsed)
    assert conn.execute(Image.__table__.select()).first() is not None  # still there


@pytest.mark.parametrize("item", [["s", "~", "^mel"], ["a", "!~", "a"], ["s", "~", "oma$"]])
def test_regex_on_many_distinct_values_agrees_too(index, item, monkeypatch):
    import mirror.query

    monkeypatch.setattr(mirror.query, "MAX_DISTINCT", 1)  # force the per-row regex
    check(index, [item])


def test_same_field_ranges_merge_but_list_elements_do_not(index):
    check(index, [["b.c", ">=", 0], ["b.c", "<", 61]])
    check(index, [["tags", "ni", 1], ["tags", "ni", True]])  # two different elements
    conn, docs = index
    both = [d["_id"] for d in docs
            if isinstance(d.get("tags"), list) and any(eq(e, 1) for e in d["tags"])
            and any(eq(e, True) for e in d["tags"])]
    assert docs[0]["_id"] in both


def test_value_sets_answer_without_image_fields(index):
    """Fresh value sets answer alone (no fallback) and agree with the reference; only a
    text test on a field holding long text, which needs the documents, falls back."""
    conn, docs = index
    if not is_fresh(conn):
        pytest.skip("value sets are stale in this variant")
    long_text = {p for p in PATHS for d in docs
                 if isinstance(get(d, p), str) and len(get(d, p)) > MAX_INDEXED_TEXT}
    ranged = {p for p in PATHS if (k := kinds_at(conn, p)) and k[1]}
    answered = 0
    for item in OPERATOR_CASES + [["s", "<", 10], ["tags", "ni", "mel"]]:
        parsed = criteria([item])
        try:
            got = select_ids(conn, parsed, method="sets")
        except QueryError as exc:
            assert "value sets cannot answer" in str(exc)
            substring = item[0] in ranged and item[1] in ("~", "!~", "ni", "not ni")
            assert substring or item[0] in long_text and isinstance(item[2], (str, list)), item
            continue
        assert got == brute(docs, parsed), item
        assert select_ids(conn, parsed, method="sets", limit=3) == brute(docs, parsed)[:3]
        answered += 1
    assert answered >= 20


def test_value_sets_span_blocks_and_ids_of_any_width(tmp_path, monkeypatch):
    """Positions map back to the right ids across many blocks, with ids of equal width
    (sliced out of a block) and of varying width (split)."""
    import mirror.valuesets

    monkeypatch.setattr(mirror.valuesets, "BLOCK", 4)
    monkeypatch.setattr(mirror.valuesets, "MIN_MAX_VALUES", 10)  # _id gets no value sets
    docs = [{"_id": "id" + "x" * (i % 3) + str(i), "n": i % 5, "t": ["a", "b"][i % 2]}
            for i in range(41)]
    writer = IndexWriter(Layout(tmp_path / "m"))
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in docs], utc_now())
    with writer.session() as session:
        assert refresh(session)
    with writer.engine.connect() as conn:
        for where in ([["n", "==", 3]], [["n", ">=", 1]], [["t", "==", "a"], ["n", "<", 2]],
                      [["n", "!=", 0]]):
            parsed = criteria(where)
            expected = brute(docs, parsed)
            assert select_ids(conn, parsed, method="sets") == expected, where
            assert select_ids(conn, parsed, method="sql") == expected, where
        # _id has too many values for sets: value runs answer its ranges, image_fields its
        # regular expressions
        for where in ([["n", "==", 1], ["_id", ">", "idx"]], [["_id", "<=", "idx1"]]):
            parsed = criteria(where)
            assert select_ids(conn, parsed, method="sets") == brute(docs, parsed), where
        parsed = criteria([["_id", "~", "^idx"]])
        with pytest.raises(QueryError, match="value sets cannot answer"):
            select_ids(conn, parsed, method="sets")
        assert select_ids(conn, parsed) == brute(docs, parsed)
    writer.close()


def test_ids_are_picked_from_blocks_of_fixed_and_varying_width():
    import numpy as np

    from mirror.valuesets import _block, _pick

    for ids in ([f"{i:024x}" for i in range(1000)], [f"id{i}" for i in range(1000)]):
        block = _block(0, ids)
        assert bool(block["width"]) == (len(ids[0]) == 24)
        for offsets in ([0], [5, 17, 999], list(range(0, 1000, 3)), list(range(1000))):
            picked = _pick(block["ids"], block["width"], np.array(offsets))
            assert picked.decode().split("\x1f")[:-1] == [ids[o] for o in offsets]


def id_list(ids: list[str]):
    from mirror.valuesets import IdList

    return IdList("".join(i + "\x1f" for i in ids).encode(), len(ids[0]) if ids else 24)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**40), unique=True, max_size=40).map(sorted),
       st.integers(-45, 45), st.integers(-45, 45), st.integers(0, 2**40 + 1))
def test_an_id_list_behaves_like_the_sorted_list_it_stands_for(numbers, a, b, probe):
    """Selections hand out ids as an IdList (strings made on demand): every read a user
    makes of a list of ids gives the same answer."""
    ids = [f"{n:024x}" for n in numbers]
    lazy = id_list(ids)
    assert len(lazy) == len(ids) and list(lazy) == ids == lazy and lazy.tolist() == ids
    assert lazy[a:b] == ids[a:b] and lazy[a::2] == ids[a::2] and list(lazy[a:][:b]) == ids[a:][:b]
    if -len(ids) <= a < len(ids):
        assert lazy[a] == ids[a]
    else:
        with pytest.raises(IndexError):
            lazy[a]
    for key in (f"{probe:024x}", *ids[:3], "short", 7, f"{probe:024x}"[:-1] + "\x1f", "é" * 12,
                "\ud800" * 24):
        assert (key in lazy) == (key in ids)
    assert lazy != ids + ["x"] and lazy != "".join(ids)
    assert set(lazy) == set(ids) and sorted(reversed(lazy)) == ids


def test_an_id_list_refuses_records_of_the_wrong_width():
    from mirror.valuesets import IdList

    with pytest.raises(ValueError, match="one width"):
        IdList(b"abc\x1fabcd\x1f", 3)
    assert repr(id_list([f"{i:024x}" for i in range(5)])).endswith("... (5 ids)])")


@pytest.mark.parametrize("method", ["sql", "sets"])
def test_integers_beyond_a_float_are_indexed_in_order(tmp_path, method):
    """JSON integers have no size limit: one beyond a float's range is indexed as +-inf
    (still ordered against every number), not a crash of the sync; its INTEGER column
    copy is left empty (PostgreSQL's INTEGER is 32 bits)."""
    big = 10**400
    docs = [{"_id": f"{i:024x}", "age_approx": v, "meta": {"clinical": {"age_approx": v}}}
            for i, v in enumerate([big, -big, 5, 3_000_000_000])]
    writer = IndexWriter(Layout(tmp_path / "m"))
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in docs], utc_now())
        refresh(session)
    with writer.engine.connect() as conn:
        for where, expected in ([["age_approx", ">", 6]], [0, 3]), \
                ([["age_approx", "<", 0]], [1]), ([["age_approx", "<=", 5]], [1, 2]):
            got = select_ids(conn, criteria(where), method=method)
            assert got == [docs[i]["_id"] for i in expected], where
        ages = dict(conn.execute(select(Image.id, Image.age_approx)).all())
    assert list(ages.values()) == [None, None, 5, None]
    writer.close()


@pytest.mark.parametrize("value", [10**400, float("inf"), float("nan"), [1, float("-inf")]])
def test_numbers_no_index_can_hold_are_refused_in_criteria(value):
    op = "in" if isinstance(value, list) else ">"
    with pytest.raises(QueryError, match="NaN, infinite or beyond a float's range"):
        criteria([["meta.clinical.age_approx", op, value]])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 70_000).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.lists(st.integers(0, n - 1), unique=True).map(sorted), max_size=4))))
def test_packed_bitmaps_give_the_positions_set_and_ignore_their_padding(case):
    """Selections combine criteria as bitmaps 8 positions a byte: setting positions, or-ing,
    inverting (which flips the padding bits of the last byte too) and reading positions back
    agree with numpy's set operations."""
    import numpy as np

    from mirror.valuesets import _set_bits, all_bits, no_bits, positions_of

    n, runs = case
    bits = no_bits(n)
    merged = np.sort(np.concatenate([np.array(r, np.uint32) for r in runs] or
                                    [np.empty(0, np.uint32)]), kind="stable")
    _set_bits(bits, merged)
    union = np.unique(merged)
    assert positions_of(bits, n).tolist() == union.tolist()
    assert positions_of(~bits, n).tolist() == np.setdiff1d(np.arange(n), union).tolist()
    assert positions_of(all_bits(n) & ~bits, n).size == n - union.size


def test_value_runs_cut_few_runs_and_leave_scattered_points_to_image_fields(tmp_path,
                                                                            monkeypatch):
    """A range reads the runs inside it whole and cuts at most the two at its ends, so it
    never gives up; a list of points scattered over more runs than MAX_CUT does, and
    image_fields answers it."""
    monkeypatch.setattr(mirror.valuesets, "MIN_MAX_VALUES", 10)
    monkeypatch.setattr(mirror.valueruns, "RUN", 4)
    monkeypatch.setattr(mirror.valueruns, "MAX_CUT", 2)
    docs = [{"_id": f"{i:024x}", "n": i % 60, "t": f"v{i // 7:03d}"} for i in range(120)]
    writer = IndexWriter(Layout(tmp_path / "m"))
    with writer.session() as session:
        ingest_documents(session, IMAGE, [(d, "0" * 64, "x", 0) for d in docs], utc_now())
        refresh(session)
    with writer.engine.connect() as conn:
        assert kinds_at(conn, "n")[1] and kinds_at(conn, "t")[1]  # both in runs
        for where in ([["n", ">=", 7.5]], [["n", "<", 30], ["t", ">", "v004"]],
                      [["t", "<=", "v010"]], [["t", "==", "v003"]], [["n", "in", [1, 2]]],
                      [["n", ">", 59]], [["t", "!=", "v001"]]):
            parsed = criteria(where)
            assert select_ids(conn, parsed, method="sets") == brute(docs, parsed), where
        scattered = criteria([["n", "in", [1, 20, 40, 59]]])
        with pytest.raises(QueryError, match="value sets cannot answer"):
            select_ids(conn, scattered, method="sets")
        assert select_ids(conn, scattered) == brute(docs, scattered)
    writer.close()


def test_value_runs_are_built_in_pythons_order_whatever_the_database_returns():
    """Runs are cut in the order the database returns; a collation that disagrees with
    Python's (code point) order is caught, and the caller sorts in Python instead."""
    from mirror.valueruns import _runs

    sorted_ids = np.array([f"{i:024x}" for i in range(6)], dtype=str)
    rows = [("a", sorted_ids[3]), ("b", sorted_ids[0]), ("b", sorted_ids[5]), ("c", sorted_ids[1])]
    built, held = _runs([rows[:2], rows[2:]], "p", False, "t", sorted_ids)
    assert [(r["first_txt"], r["last_txt"], r["count"]) for r in built] == [("a", "b", 2),
                                                                             ("b", "c", 2)]
    assert held.tolist() == [0, 1, 3, 5]
    assert np.frombuffer(built[0]["positions"], "<u4").tolist() == [3, 0]
    assert _runs([rows[2:], rows[:2]], "p", False, "t", sorted_ids) is None  # out of order
    assert _runs([[rows[1], rows[0]]], "p", False, "t", sorted_ids) is None
