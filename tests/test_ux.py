"""What a new user sees (issue 17): honest dry runs, safe URL changes, clear errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mirror.cli import main
from mirror.sources.isic_v1.sandbox import serve


def _sync(root, url, *extra):
    return CliRunner().invoke(main, ["sync", "--root", str(root), "--url", url, "--quiet",
                                     "--blobs", "thumbnail", *extra])


def _change_lines(output: str) -> list[str]:
    """The lines about documents (not files, requests or the plan)."""
    return [line for line in output.splitlines()
            if line.split()[0] in ("image", "dataset", "segmentation", "study", "annotation")
            and "files" not in line.split()[1]]


def test_a_dry_run_reports_the_changes_and_the_next_run_reports_them_again(tmp_path):
    root = tmp_path / "m"
    with serve(images=6, seed=4, private_fraction=0.0) as sb:
        assert _sync(root, sb.url).exit_code == 0
        sb.mutate(add=2, update=1)
        dry = _sync(root, sb.url, "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert "image              1 changed, 2 new, 5 unchanged" in dry.output
        assert "plan: 2 file(s) to fetch" in dry.output
        assert "dry run: nothing was kept" in dry.output
        again = _sync(root, sb.url, "--dry-run")
        real = _sync(root, sb.url)
        assert real.exit_code == 0, real.output
        after = _sync(root, sb.url)
    assert _change_lines(again.output) == _change_lines(dry.output)
    assert _change_lines(real.output) == _change_lines(dry.output)
    assert "thumbnail files    2 fetched" in real.output
    assert "image              8 unchanged" in after.output


def test_another_url_on_an_existing_mirror_is_refused_unless_rebased(tmp_path):
    root = tmp_path / "m"
    with serve(images=3, seed=5, private_fraction=0.0) as sb:
        assert _sync(root, sb.url).exit_code == 0
        first_url = sb.url
    with serve(images=3, seed=5, private_fraction=0.0) as moved:
        refused = _sync(root, moved.url)
        assert refused.exit_code == 2
        assert refused.output.strip().splitlines() == [
            f"error: {root} mirrors {first_url}, not {moved.url}; if this is the same archive "
            "at a new address, add --rebase-url; otherwise choose another --root"]
        assert json.loads((root / "mirror.json").read_text())["base_url"] == first_url
        rebased = _sync(root, moved.url, "--rebase-url")
        assert rebased.exit_code == 0, rebased.output
        assert "image              3 unchanged" in rebased.output
    assert json.loads((root / "mirror.json").read_text())["base_url"] == moved.url


def test_a_first_sync_that_stores_nothing_leaves_no_mirror(tmp_path):
    root = tmp_path / "m"
    with serve(images=3, seed=5, private_fraction=0.0) as sb:
        wrong = sb.url.replace("/api/v1", "/nothing/api/v1")  # the wrong server
        failed = _sync(root, wrong)
        assert failed.exit_code == 2 and failed.output.startswith("error: ")
        assert len(failed.output.strip().splitlines()) == 1, failed.output
        assert not root.exists()
        (tmp_path / "empty").mkdir()
        assert _sync(tmp_path / "empty", wrong).exit_code == 2
        assert list((tmp_path / "empty").iterdir()) == []
        right = _sync(root, sb.url)  # no re-point: the wrong URL was never remembered
        assert right.exit_code == 0, right.output
    assert json.loads((root / "mirror.json").read_text())["base_url"] == sb.url
