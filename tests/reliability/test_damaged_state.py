"""Damaged local state ends in one line naming the problem and the fix, exit 2 (issue 16).

A truncated index generation, a dangling ``CURRENT``, a garbage ``mirror.json`` and a full
disk each give one ``error:`` line (never a traceback); ``reindex`` rebuilds the index from
the files alone, whatever the state of ``index/`` and of the writer's state folder, and a
sync afterwards leaves a verified mirror.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.lease import WriterLease
from mirror.sources.isic_v1.sandbox import serve
from tests.reliability.helpers import consistency_problems, published_files

pytestmark = pytest.mark.timeout(180)
SYNC = ("--quiet", "--blobs", "thumbnail")


@pytest.fixture(scope="module")
def sandbox():
    with serve(images=4, seed=103, private_fraction=0.0) as sb:
        yield sb


@pytest.fixture
def mirror_root(tmp_path, sandbox):
    root = tmp_path / "m"
    code, out = _cli("sync", "--root", str(root), "--url", sandbox.url, *SYNC)
    assert code == 0, out
    return root


def _cli(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args))
    assert "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done.exit_code, done.output


def _one_error(code: int, output: str, *words: str) -> str:
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def _writable(path) -> None:
    os.chmod(path, 0o644)


@pytest.mark.parametrize("garbage", [b"garbage{", b"[1, 2]", b'{"source": 5}',
                                     b'{"format": "x"}', b'{"authenticated": "yes"}'])
def test_a_garbage_mirror_json_is_one_line_everywhere(mirror_root, garbage):
    files = published_files(mirror_root)
    _writable(mirror_root / "mirror.json")
    (mirror_root / "mirror.json").write_bytes(garbage)
    for command in (["status"], ["verify"], ["sync", *SYNC], ["reindex"], ["gc"]):
        code, out = _cli(command[0], "--root", str(mirror_root), *command[1:])
        _one_error(code, out, "mirror.json", "restore it")
    assert {p.name for p in mirror_root.iterdir()} >= {"isic", "mirror.json"}
    shutil.rmtree(mirror_root / "isic" / "index")  # nothing of it was needed...
    (mirror_root / "mirror.json").unlink()
    assert files  # ... and the store is untouched by every refused command
    assert all((mirror_root / "isic" / p).exists() for p in files)


@pytest.mark.parametrize("damage", ["truncated generation", "dangling CURRENT",
                                    "truncated generation, lost state folder"])
def test_a_damaged_index_names_reindex_which_rebuilds_it(mirror_root, damage):
    index = mirror_root / "isic" / "index"
    if damage.startswith("truncated"):
        generation = sorted(index.glob("index-*.sqlite"))[-1]
        _writable(generation)
        data = generation.read_bytes()
        generation.write_bytes(data[:len(data) // 3])
    else:
        _writable(index / "CURRENT")
        (index / "CURRENT").write_text("index-000099.sqlite\n")
    if "lost state" in damage:
        shutil.rmtree(os.environ["MIRROR_STATE_DIR"])
    else:  # readers need the published generation: one line naming the fix
        for command in (["status"], ["verify"]):
            code, out = _cli(command[0], "--root", str(mirror_root), *command[1:])
            _one_error(code, out, "mirror reindex")
    code, out = _cli("reindex", "--root", str(mirror_root))
    assert code == 0, out
    code, out = _cli("sync", "--root", str(mirror_root), *SYNC)
    assert code == 0, out
    code, out = _cli("verify", "--root", str(mirror_root))
    assert code == 0 and "all good" in out, out
    assert consistency_problems(mirror_root) == []


def test_a_full_disk_at_the_lease_is_not_called_read_only(mirror_root, monkeypatch):
    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(WriterLease, "_write_holder", full)
        code, out = _cli("sync", "--root", str(mirror_root), *SYNC)
    line = _one_error(code, out, "disk", "full", "free space")
    assert "read-only" not in line
    code, out = _cli("sync", "--root", str(mirror_root), *SYNC)
    assert code == 0, out
