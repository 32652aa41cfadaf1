"""``mirror fields`` and ``mirror names`` on a mirror of every source (issue 17: "no way to
discover names"), through the real CLI; each field's count and examples are checked
against the stored documents, not against the projection they are read from."""

from __future__ import annotations

import json

import pytest

from mirror.api import Mirror
from tests.contract.cases import CASES, SourceCase
from tests.reliability.helpers import run_mirror

pytestmark = pytest.mark.timeout(240)

# what each source's mirror must list (its main kind's table first)
EXPECTED = {
    "isic-v1": (("images", "segmentations", "datasets", "studies"),
                {"images": ("meta.clinical.diagnosis", "dataset.name")},
                ("datasets", "studies")),
    "tcia-v4": (("series", "instances"), {"series": ("Collection", "Modality")},
                ("collections",)),
    "isic-v2": (("images", "collections"), {"images": ("isic_id",)}, ("collections",)),
    "idc": (("series", "instances", "collections"),
            {"series": ("collection_id", "Modality"), "instances": ("SOPInstanceUID",)},
            ("collections",)),
}


@pytest.fixture(params=CASES, ids=[c.name for c in CASES], scope="module")
def synced(request, tmp_path_factory):
    case: SourceCase = request.param
    root = tmp_path_factory.mktemp(case.name) / "m"
    with case.start() as archive:
        done = run_mirror("sync", "--root", str(root), "--url", archive.url, "--quiet",
                          *archive.sync_args)
        assert done.returncode == 0, done.stderr
    return case.name, root


def _documents(root, kind: str) -> list[dict]:
    with Mirror(root) as m:
        return [m.document(kind, i) for i in m.ids(kind)]


def _value(doc: dict, path: str):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def test_fields_lists_every_kind_with_counts_types_and_examples(synced):
    name, root = synced
    tables, paths, _ = EXPECTED[name]
    done = run_mirror("fields", "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(tables) <= set(data), data.keys()
    with Mirror(root) as m:
        kinds = {k.table: k.name for k in m.source.kinds}
    for table, wanted in paths.items():
        fields = {f["field"]: f for f in data[table]["fields"]}
        docs = _documents(root, kinds[table])
        assert data[table]["objects"] == len(docs) > 0
        for path in wanted:
            assert path in fields, (table, path, sorted(fields)[:30])
            values = [_value(d, path) for d in docs]
            having = [v for v in values if v is not None]
            assert fields[path]["count"] == len(having), path
            assert fields[path]["types"] == {"text": len(having)}, path
            assert fields[path]["examples"] and set(fields[path]["examples"]) <= set(having)
    text = run_mirror("fields", "--root", str(root), tables[0])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{tables[0]}: {data[tables[0]]['objects']} object(s), ")
    assert any(line.split()[0] == "_id" and "text" in line for line in lines[1:])


def test_names_lists_the_groups_the_mirror_holds(synced):
    name, root = synced
    groups = EXPECTED[name][2]
    done = run_mirror("names", "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert tuple(data) == groups
    main = EXPECTED[name][0][0]
    with Mirror(root) as m:
        objects = len(m.select(main))
    for label in groups:
        assert data[label] and all(row["name"] for row in data[label]), data[label]
        if name != "isic-v2" and label != "studies":  # members counted: all objects, once
            assert sum(row[main] for row in data[label]) == objects, data[label]
        one = run_mirror("names", "--root", str(root), label)
        assert one.returncode == 0 and one.stdout.startswith(f"{label}: {len(data[label])}\n")
    bad = run_mirror("names", "--root", str(root), "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert f"it has: {', '.join(groups)}" in bad.stderr
