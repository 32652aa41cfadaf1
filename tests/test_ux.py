"""What a new user sees (issue 17): honest dry runs, safe URL changes, clear errors."""

from __future__ import annotations

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
