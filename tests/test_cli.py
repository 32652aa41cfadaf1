"""The command line: thin over the library, one clear line per error."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.isic_v1.sandbox import serve


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "m"
    with serve(images=5, seed=31, private_fraction=0.0) as sb:
        result = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                           "--quiet", "--blobs", "thumbnail"])
        assert result.exit_code == 0, result.output
    return root


def test_human_summary_names_what_moved(tmp_path):
    with serve(images=3, seed=2, private_fraction=0.0) as sb:
        result = CliRunner().invoke(main, ["sync", "--root", str(tmp_path / "m"), "--url",
                                           sb.url, "--blobs", "full", "--quiet"])
    assert result.exit_code == 0
    assert "image              3 new" in result.output
    assert "image files        3 fetched" in result.output


def test_dry_run_prints_the_plan_only(tmp_path):
    with serve(images=3, seed=2, private_fraction=0.0) as sb:
        result = CliRunner().invoke(main, ["sync", "--root", str(tmp_path / "m"), "--url",
                                           sb.url, "--dry-run"])
    assert result.exit_code == 0
    assert result.output.startswith("plan: ") and "to fetch" in result.output


def test_errors_are_one_clear_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["status", "--root", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'nothing'} is not a mirror (no mirror.json); run "
        f"'mirror sync --root {tmp_path / 'nothing'}' to create one"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.pdf").write_text("precious")
    result = runner.invoke(main, ["sync", "--root", str(tmp_path / "busy"), "--url",
                                  "http://127.0.0.1:9/api/v1"])
    assert result.exit_code == 2 and "not empty and is not a mirror" in result.output
    assert (tmp_path / "busy" / "thesis.pdf").read_text() == "precious"
    result = runner.invoke(main, ["sync", "--root", str(tmp_path / "x"), "--url",
                                  "http://127.0.0.1:9/api/v1", "--blobs", "movies"])
    assert result.exit_code == 2 and "unknown sync choice(s) movies" in result.output


def test_root_from_the_environment(mirror_root):
    result = CliRunner().invoke(main, ["status", "--json"], env={"MIRROR_ROOT": str(mirror_root)})
    assert result.exit_code == 0
    assert json.loads(result.output)["objects"]["image"]["current"] == 5


def test_lock_status_gc_and_reindex(mirror_root):
    runner = CliRunner()
    assert runner.invoke(main, ["lock", "status", "--root", str(mirror_root)]).output == \
        "no writer\n"
    gc = runner.invoke(main, ["gc", "--root", str(mirror_root), "--dry-run", "--json"])
    assert gc.exit_code == 0 and json.loads(gc.output)["files"] == []
    reindex = runner.invoke(main, ["reindex", "--root", str(mirror_root), "--json"])
    assert reindex.exit_code == 0 and json.loads(reindex.output)["blobs"] == 5
    verify = runner.invoke(main, ["verify", "--root", str(mirror_root)])
    assert verify.exit_code == 0 and "all good" in verify.output
