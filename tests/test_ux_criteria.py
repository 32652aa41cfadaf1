"""Criteria that can never match, bare digits against text, negative limits (issue 17).

A typo in a field name, or a number compared with a text field, used to select nothing
with exit 0. Now each says so: a ``warning:`` line naming the closest field or the
field's types (a ``CriterionWarning`` in Python), and ``--strict`` (``strict=True``)
makes it an error with exit 2.
"""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from mirror import Mirror
from mirror.cli import main
from mirror.errors import CriterionWarning, QueryError, UnmatchableCriterionError
from mirror.sources.isic_v1.sandbox import serve


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("criteria") / "m"
    with serve(images=12, seed=21, private_fraction=0.0) as sb:
        done = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                         "--quiet", "--blobs", ""])
        assert done.exit_code == 0, done.output
    return root


def _run(*args):
    return CliRunner().invoke(main, list(args))


def _lines(output: str, start: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(start)]


def test_a_misspelt_field_warns_naming_the_closest_field(root):
    done = _run("query", "--root", str(root), "--count",
                "--where", "meta.clinical.diagnosiss == melanoma")
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[-1] == "0"
    assert _lines(done.output, "warning: ") == [
        "warning: no images in this mirror have a field 'meta.clinical.diagnosiss' (did you "
        "mean 'meta.clinical.diagnosis'?): [\"meta.clinical.diagnosiss\", \"==\", "
        "\"melanoma\"] selects no images; --strict makes this an error"]
    for args in (["query", "--format", "ids"], ["query", "--kind", "images"],
                 ["export", "metadata", str(root.parent / "none.csv")]):
        once = _run(*args, "--root", str(root), "--where", "meta.clinical.diagnosiss == x")
        assert once.exit_code == 0 and len(_lines(once.output, "warning: ")) == 1, once.output


def test_an_export_column_name_points_at_the_field_it_shows(root):
    """``isic_id`` is the first column of every metadata export; the field is ``name``."""
    done = _run("query", "--root", str(root), "--count", "--where", "isic_id == ISIC_0000001")
    assert "(did you mean 'name'?)" in _lines(done.output, "warning: ")[0], done.output
    short = _run("query", "--root", str(root), "--count", "--where", "age_approx >= 30")
    assert "(did you mean 'meta.clinical.age_approx'?)" in short.output


def test_a_negated_criterion_on_a_missing_field_says_it_selects_everything(root):
    done = _run("query", "--root", str(root), "--count",
                "--where", "meta.clinical.diagnosiss != melanoma")
    assert done.output.splitlines()[-1] == "12"
    assert "selects all images" in _lines(done.output, "warning: ")[0]


def test_a_value_of_a_type_the_field_never_holds_warns_naming_the_type(root):
    done = _run("query", "--root", str(root), "--count",
                "--where", "meta.clinical.age_approx == old")
    assert _lines(done.output, "warning: ") == [
        "warning: the field 'meta.clinical.age_approx' of images holds numbers, never text: "
        "[\"meta.clinical.age_approx\", \"==\", \"old\"] selects no images; --strict makes "
        "this an error"]
    fine = _run("query", "--root", str(root), "--count",
                "--where", "meta.clinical.age_approx >= 0", "--where", "name ~ ^ISIC_")
    assert fine.exit_code == 0 and "warning" not in fine.output, fine.output
    assert 0 < int(fine.output.strip()) <= 12


@pytest.mark.parametrize("command", [
    ["query", "--count"],
    ["export", "metadata", "{tmp}/out.csv"],
    ["export", "files", "{tmp}/files"],
    ["snapshot", "create", "typo"],
])
def test_strict_makes_it_a_one_line_error_that_writes_nothing(root, tmp_path, command):
    args = [a.format(tmp=tmp_path) for a in command]
    done = _run(*args, "--root", str(root), "--strict", "--where", "isic_id == ISIC_0000001")
    assert done.exit_code == 2, done.output
    assert done.output.strip().splitlines() == [
        "error: no images in this mirror have a field 'isic_id' (did you mean 'name'?): "
        "[\"isic_id\", \"==\", \"ISIC_0000001\"] selects no images; fix the criterion, or "
        "leave out --strict to run it anyway"]
    assert list(tmp_path.iterdir()) == []
    assert "typo" not in _run("snapshot", "list", "--root", str(root)).output


def test_bare_digits_against_a_text_field_mean_the_text(root):
    """``created >= 2019`` (the docs' own example) is ``created >= "2019"``: a number could
    never match a field that holds text only."""
    def count(where):
        done = _run("query", "--root", str(root), "--count", "--where", where)
        assert done.exit_code == 0 and "warning" not in done.output, done.output
        return int(done.output.strip())

    with Mirror(root) as m:
        created = sorted(m.document("image", i)["created"] for i in m.ids("image"))
    year = created[len(created) // 2][:4]
    expected = sum(c >= year for c in created)
    assert 0 < expected < 12
    assert count(f"created >= {year}") == count(f'created >= "{year}"') == expected
    assert count(f"created ni {year}") == sum(year in c for c in created)
    in_list = count(f"name in ISIC_0000001, {year}")  # a comma list, item by item
    assert in_list == 1
    # a number field keeps numbers: 30 is not "30"
    with Mirror(root) as m:
        ages = [m.document("image", i)["meta"]["clinical"].get("age_approx")
                for i in m.ids("image")]
    assert count("meta.clinical.age_approx >= 30") == sum(a is not None and a >= 30
                                                          for a in ages)


def test_a_snapshot_states_the_criterion_as_it_ran(root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    done = _run("snapshot", "create", "since", "--root", str(copy),
                "--where", "created >= 2015")
    assert done.exit_code == 0, done.output
    shown = json.loads(_run("snapshot", "show", "since", "--root", str(copy)).output)
    assert shown["selection"]["where"] == [["created", ">=", "2015"]]


def test_the_python_api_warns_and_strict_raises(root):
    with Mirror(root) as m:
        with pytest.warns(CriterionWarning, match=r"holds text, never a number") as caught:
            assert len(m.select_images(["created", ">=", 2015])) == 0
        assert caught[0].filename == __file__  # the warning points at the caller's line
        with pytest.warns(CriterionWarning, match=r"did you mean 'name'\?"):
            assert m.select("images", ["isic_id", "==", "ISIC_0000001"]) == []
        with pytest.raises(UnmatchableCriterionError, match="did you mean 'failed'"):
            m.select("segmentations", ["faild", "==", False], strict=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a string criterion reads as --where does
            assert len(m.select_images("created >= 2015")) > 0
            assert len(m.select_images(["meta.clinical.diagnosis", "is", None])) >= 0


def test_a_negative_limit_is_refused_everywhere(root):
    for args in (["query"], ["query", "--count"], ["query", "--kind", "datasets"]):
        done = _run(*args, "--root", str(root), "--limit", "-1")
        assert done.exit_code == 2, done.output
        assert done.output.strip().splitlines() == [
            "error: the limit (--limit) must be a whole number of 0 or more, not -1; leave "
            "it out to select everything"]
    sync = _run("sync", "--root", str(root), "--limit", "-1")
    assert sync.exit_code == 2 and sync.output.startswith("error: "), sync.output
    assert len(sync.output.strip().splitlines()) == 1
    with Mirror(root) as m:
        for call in (lambda: m.select_images(limit=-1), lambda: m.select("images", limit=-2),
                     lambda: m.select_images(limit=1.5)):
            with pytest.raises(QueryError, match="0 or more"):
                call()
        assert len(m.select_images(limit=0)) == 0
        assert len(m.select_images(limit=3)) == 3


def test_an_unknown_dataset_points_at_the_command_that_lists_them(root):
    done = _run("query", "--root", str(root), "--dataset", "NOPE")
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [
        "error: no dataset 'NOPE' in this mirror; 'mirror names datasets' lists those it holds"]
    listed = _run("names", "--root", str(root), "datasets", "--json")
    assert listed.exit_code == 0, listed.output
    biggest = max(json.loads(listed.output)["datasets"], key=lambda d: d["images"])
    scoped = _run("query", "--root", str(root), "--dataset", biggest["name"], "--count")
    assert scoped.exit_code == 0 and int(scoped.output) == biggest["images"] > 0, scoped.output


def test_a_mistyped_option_or_value_is_one_line_naming_the_help(root):
    for args, start in ((["query", "--root", str(root), "--limit", "abc"],
                         "error: Invalid value for '--limit': 'abc' is not a valid integer; "
                         "see '"),
                        (["query", "--root", str(root), "--wher", "x == 1"],
                         "error: No such option '--wher'. (Did you mean one of: '--help', "
                         "'--where'?)"),
                        (["snapshot", "create", "--root", str(root)],
                         "error: Missing argument 'NAME'; see '"),
                        (["nope"], "error: No such command 'nope'"),
                        (["--bogus", "status"], "error: No such option '--bogus'")):
        done = _run(*args)
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), done.output
        assert lines[0].endswith(" --help'"), done.output
    bare = _run("snapshot")  # a group without its command still shows its help
    assert "Commands:" in bare.output and "create" in bare.output, bare.output
