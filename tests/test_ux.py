"""What a new user sees (issue 17): honest dry runs, safe URL changes, clear errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
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


# -- every user error is one line ----------------------------------------------------------


def _one_error_line(output: str, exit_code: int, start: str, code: int = 2) -> None:
    assert exit_code == code, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), output


@pytest.fixture(scope="module")
def small_mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux") / "m"
    with serve(images=4, seed=8, private_fraction=0.0) as sb:
        assert _sync(root, sb.url).exit_code == 0
    return root


def _copy(root, tmp_path):
    shutil.copytree(root, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a read-only bind mount needs root and unshare")
def test_writing_commands_on_a_read_only_root_say_so_in_one_line(small_mirror, tmp_path):
    mounted = tmp_path / "ro"
    mounted.mkdir()
    script = textwrap.dedent(f"""
        mount --bind {small_mirror} {mounted} && mount -o remount,ro,bind {mounted} || exit 99
        for c in sync gc reindex "snapshot create s1" "lock break" status; do
            {sys.executable} -m mirror $c --root {mounted} >/dev/null 2>{tmp_path}/err
            echo "$c|$?|$(cat {tmp_path}/err | wc -l)|$(head -c 60 {tmp_path}/err)"
        done
    """)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if done.returncode == 99 or "Operation not permitted" in done.stderr:
        pytest.skip(f"no bind mounts here: {done.stderr.strip()[:200]}")
    rows = [line.split("|") for line in done.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["sync", "gc", "reindex", "snapshot create s1",
                                    "lock break", "status"], done.stdout + done.stderr
    for command, code, lines, text in rows[:-1]:
        assert (code, lines) == ("2", "1"), (command, code, lines, text)
        assert text.startswith("error: cannot take the writer lease for 'mirror "), text
    assert rows[-1][1:3] == ["0", "0"]  # reading still works


def test_an_empty_password_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["sync", "--root", str(tmp_path / "m"), "--url",
                                       "http://127.0.0.1:9/api/v1", "--username", "bob"],
                                input="\n")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: no password given for bob; type it at the prompt or set MIRROR_PASSWORD")
    assert not (tmp_path / "m").exists()


def test_damaged_local_state_is_one_line_naming_the_fix(small_mirror, tmp_path):
    root = _copy(small_mirror, tmp_path)
    current = root / "isic" / "index" / "CURRENT"
    current.chmod(0o644)
    current.write_text("garbage\n")
    result = CliRunner().invoke(main, ["status", "--root", str(root)])
    _one_error_line(result.output, result.exit_code, "error: ")
    assert "is damaged" in result.output and "mirror reindex" in result.output
    reindexed = CliRunner().invoke(main, ["reindex", "--root", str(root)])
    assert reindexed.exit_code == 0, reindexed.output
    generation = next((root / "isic" / "index").glob("index-*.sqlite"))
    generation.chmod(0o644)
    generation.write_bytes(b"not a database" * 100)
    current.chmod(0o644)
    current.write_text(generation.name + "\n")
    result = CliRunner().invoke(main, ["status", "--root", str(root)])
    _one_error_line(result.output, result.exit_code, "error: the index is damaged")
    assert "mirror reindex" in result.output


def test_a_damaged_working_database_is_rebuilt_from_the_published_index(tmp_path):
    root = tmp_path / "m"
    with serve(images=3, seed=9, private_fraction=0.0) as sb:
        assert _sync(root, sb.url).exit_code == 0
        for work in Path(os.environ["MIRROR_STATE_DIR"]).rglob("work.sqlite"):
            work.write_bytes(b"\0garbage" * 1000)
            for suffix in ("-wal", "-shm"):
                Path(f"{work}{suffix}").unlink(missing_ok=True)
        again = _sync(root, sb.url)
    assert again.exit_code == 0, again.output
    assert "image              3 unchanged" in again.output


# -- interrupted runs ------------------------------------------------------------------------


def _start(root, url):
    cmd = [sys.executable, "-m", "mirror", "sync", "--root", str(root), "--url", url,
           "--quiet", "--workers", "2", "--blobs", "full"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def _downloads(sb) -> int:
    return sum(n for k, n in sb.stats().items() if k.endswith("/download"))


def _wait_for(sb, n: int) -> None:
    deadline = time.monotonic() + 60
    while _downloads(sb) < n and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_sync_exits_130_with_the_resume_hint(tmp_path, signum):
    root = tmp_path / "m"
    with serve(images=30, seed=10, private_fraction=0.0, faults="slow=0.3") as sb:
        child = _start(root, sb.url)
        _wait_for(sb, 6)
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 130, err[-2000:]
        last = err.strip().splitlines()[-1]
        kept = int(re.fullmatch(r"interrupted; (\d+) file\(s\) kept; run the same command "
                                r"to resume", last).group(1))
        store = root / "isic" / "store"
        images = len(list(store.glob("*/image_*.jpg")))
        # what the run published and indexed; downloads under way when the signal came
        # finish too, and the next run adopts them without a download
        assert 4 <= kept <= images, last
        status = CliRunner().invoke(main, ["lock", "status", "--root", str(root)])
        assert status.output == "no writer\n"
        resumed = CliRunner().invoke(main, ["sync", "--root", str(root), "--quiet",
                                            "--blobs", "full"])
        assert resumed.exit_code == 0, resumed.output
    fetched = int(re.search(r"image files\s+(?:\d+ adopted, )?(\d+) fetched",
                            resumed.output).group(1))
    assert fetched == 30 - images, resumed.output


def test_a_killed_holder_shows_as_stale(tmp_path):
    root = tmp_path / "m"
    with serve(images=30, seed=11, private_fraction=0.0, faults="slow=0.3") as sb:
        child = _start(root, sb.url)
        _wait_for(sb, 2)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    status = CliRunner().invoke(main, ["lock", "status", "--root", str(root)])
    assert status.exit_code == 0
    assert status.output.startswith(f"stale: held by pid {child.pid} on "), status.output
    assert f"but process {child.pid} is gone; the next writer takes it over" in status.output


# -- the size estimate -------------------------------------------------------------------------


def _stored_file_bytes(root) -> int:
    from mirror.reader import reading

    with reading(root) as r:
        return sum(size for role, size in r.conn.exec_driver_sql(
            "SELECT role, size FROM blobs") if role != "markups")


def test_the_size_estimate_comes_from_what_the_files_weigh_and_says_so(tmp_path):
    root = tmp_path / "m"
    with serve(images=40, seed=3, private_fraction=0.0) as sb:
        first = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url])
        assert first.exit_code == 0, first.output
        planned = next(line for line in first.output.splitlines() if "plan: " in line)
        stored = _stored_file_bytes(root)
        sb.mutate(add=40)
        again = CliRunner().invoke(main, ["sync", "--root", str(root)])
        assert again.exit_code == 0, again.output
        added = _stored_file_bytes(root) - stored
    mb = float(re.search(r"about ([\d.]+) MB", planned).group(1)) * 1e6
    assert 0.67 < mb / stored < 1.5, (planned, stored)  # the rule of thumb was 4.7x off
    assert "(estimate from image: 8 fetched this run, " in planned and "B/pixel" in planned
    second = next(line for line in again.output.splitlines() if "plan: " in line)
    assert "image: mean of 40 in the index" in second
    mb = float(re.search(r"about ([\d.]+) MB", second).group(1)) * 1e6
    assert 0.67 < mb / added < 1.5, (second, added)


def test_a_plan_too_big_for_the_disk_says_by_how_much_and_can_be_overridden(tmp_path,
                                                                            monkeypatch):
    from collections import namedtuple

    import mirror.sync.estimate as estimate

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(estimate.shutil, "disk_usage", lambda path: usage(10**9, 0, 1_500_000))
    root = tmp_path / "m"
    with serve(images=60, seed=3, private_fraction=0.0) as sb:
        refused = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                            "--quiet", "--blobs", "full"])
        lines = refused.output.strip().splitlines()
        assert refused.exit_code == 2, refused.output
        assert re.fullmatch(r"error: not enough disk space under \S+: the plan needs about "
                            r"[\d.]+ GB \(\+10 %\), 0\.00 GB are free, [\d.]+ GB short; free "
                            r"space, narrow the sync with --blobs/--limit, or pass "
                            r"--no-space-check if the estimate is too high", lines[-1]), lines
        forced = CliRunner().invoke(main, ["sync", "--root", str(root), "--quiet", "--blobs",
                                           "full", "--no-space-check"])
    assert forced.exit_code == 0, forced.output
    assert "image files        " in forced.output


# -- status and the run record --------------------------------------------------------------


def _bytes_under(root) -> int:
    seen, total = set(), 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            info = os.lstat(Path(folder) / name)
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def test_status_counts_every_byte_under_the_root_and_the_run_record_is_true(tmp_path):
    root = tmp_path / "m"
    with serve(images=6, seed=12, private_fraction=0.0) as sb:
        done = CliRunner().invoke(main, ["sync", "--root", str(root), "--url", sb.url,
                                         "--quiet", "--json"])
        assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert CliRunner().invoke(main, ["snapshot", "create", "--root", str(root), "s"]
                              ).exit_code == 0
    status = json.loads(CliRunner().invoke(main, ["status", "--root", str(root), "--json"]
                                           ).output)
    assert status["bytes"] == _bytes_under(root)
    index = _bytes_under(root / "isic" / "index")  # generations and their projections
    assert status["disk"]["index"] == index > 0 and status["disk"]["snapshots"] > 0
    assert status["disk"]["store"] == _bytes_under(root / "isic" / "store")
    assert status["last_sync"]["requests"] == summary["requests"] > 0
    assert status["last_sync"]["seconds"] > 0
    lines = CliRunner().invoke(main, ["status", "--root", str(root)]).output
    assert f"total    {status['bytes'] / 1e6:.1f} MB under the root: store " in lines
    assert f", {summary['requests']} requests, " in lines


# -- exports ------------------------------------------------------------------------------


def test_an_export_into_a_folder_holding_one_is_refused_or_swapped_whole(small_mirror,
                                                                         tmp_path):
    dest = tmp_path / "out"
    run = CliRunner().invoke
    first = run(main, ["export", "files", "--root", str(small_mirror), str(dest), "--blobs",
                       "thumbnail"])
    assert first.exit_code == 0, first.output
    before = sorted(p.name for p in dest.iterdir())
    assert any(n.endswith(".jpg") for n in before) and "metadata.csv" in before
    refused = run(main, ["export", "files", "--root", str(small_mirror), str(dest),
                         "--where", "name == ISIC_0000000", "--blobs", "thumbnail"])
    _one_error_line(refused.output, refused.exit_code,
                    f"error: {dest} is not empty; choose a new or empty folder, or pass "
                    "--replace to swap it for this export")
    assert sorted(p.name for p in dest.iterdir()) == before
    swapped = run(main, ["export", "files", "--root", str(small_mirror), str(dest),
                         "--where", "name == ISIC_0000000", "--blobs", "thumbnail",
                         "--replace"])
    assert swapped.exit_code == 0, swapped.output
    assert sorted(p.name for p in dest.iterdir()) == [
        "ISIC_0000000_thumbnail.jpg", "attribution.txt", "metadata.csv"]
    assert len((dest / "metadata.csv").read_text().splitlines()) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_each_metadata_export_has_its_own_attribution_file(small_mirror, tmp_path):
    run = CliRunner().invoke
    for name, where in (("all.csv", []), ("one.csv", ["--where", "name == ISIC_0000000"])):
        done = run(main, ["export", "metadata", "--root", str(small_mirror),
                          str(tmp_path / name), *where])
        assert done.exit_code == 0, done.output
        assert done.output.strip().endswith(
            f"attribution in {tmp_path / name.replace('.csv', '.attribution.txt')}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all.attribution.txt", "all.csv", "one.attribution.txt", "one.csv"]
    counts = [sum(int(line.split("\t")[0]) for line in
                  (tmp_path / f).read_text().splitlines()[2:])
              for f in ("all.attribution.txt", "one.attribution.txt")]
    assert counts == [4, 1]
    again = run(main, ["export", "metadata", "--root", str(small_mirror),
                       str(tmp_path / "one.csv")])
    _one_error_line(again.output, again.exit_code, f"error: {tmp_path / 'one.csv'} exists; "
                    "choose another name, or pass --replace to overwrite it")
    replaced = run(main, ["export", "metadata", "--root", str(small_mirror),
                          str(tmp_path / "one.csv"), "--replace"])
    assert replaced.exit_code == 0
    assert len((tmp_path / "one.csv").read_text().splitlines()) == 5


# -- snapshot identity ------------------------------------------------------------------------


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_two_mirrors_of_one_archive_state_make_the_same_snapshot(tmp_path, monkeypatch):
    import mirror.snapshots.manifest as manifest_module

    roots = [tmp_path / "a", tmp_path / "b"]
    run = CliRunner().invoke
    with serve(images=5, seed=13, private_fraction=0.0) as sb:
        for root in roots:
            assert _sync(root, sb.url).exit_code == 0
    ids, exports = [], []
    for n, root in enumerate(roots):  # created "a year apart"
        monkeypatch.setattr(manifest_module, "utc_now", lambda n=n: f"202{5 + n}-01-01T00:00:00")
        made = run(main, ["snapshot", "create", "--root", str(root), "pin", "--blobs",
                          "thumbnail"])
        assert made.exit_code == 0, made.output
        ids.append(json.loads(run(main, ["snapshot", "show", "--root", str(root), "pin"]
                                  ).output)["snapshot_id"])
        for fmt in ("tar", "bagit", "dir"):
            dest = tmp_path / f"{root.name}-{fmt}" / ("x.tar" if fmt == "tar" else "x")
            dest.parent.mkdir()
            done = run(main, ["snapshot", "export", "--root", str(root), "pin", str(dest),
                              "--format", fmt])
            assert done.exit_code == 0, done.output
        exports.append({fmt: _tree_bytes(tmp_path / f"{root.name}-{fmt}")
                        for fmt in ("tar", "bagit", "dir")})
    assert ids[0] == ids[1]
    assert exports[0] == exports[1]
    listed = run(main, ["snapshot", "list", "--root", str(roots[1])]).output
    assert listed.startswith("pin\t2026-01-01T00:00:00\t")  # local history, outside the id
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    fixed = run(main, ["snapshot", "create", "--root", str(roots[0]), "fixed", "--blobs",
                       "thumbnail"])
    assert fixed.exit_code == 0
    shown = json.loads(run(main, ["snapshot", "show", "--root", str(roots[0]), "fixed"]).output)
    assert shown["created"] == "2026-01-01T00:00:00+00:00"


def test_snapshot_delete_unpins_and_gc_then_may_remove_the_files(tmp_path):
    root = tmp_path / "m"
    run = CliRunner().invoke
    with serve(images=4, seed=14, private_fraction=0.0) as sb:
        assert _sync(root, sb.url).exit_code == 0
        assert run(main, ["snapshot", "create", "--root", str(root), "typo", "--where",
                          "name == NOPE"]).exit_code == 0
        deleted = run(main, ["snapshot", "delete", "--root", str(root), "typo"])
        assert deleted.exit_code == 0, deleted.output
        assert deleted.output.startswith("deleted snapshot typo (id ")
        assert "no snapshots" in run(main, ["snapshot", "list", "--root", str(root)]).output
        again = run(main, ["snapshot", "create", "--root", str(root), "typo"])
        assert again.exit_code == 0, again.output  # the name is free again
        missing = run(main, ["snapshot", "delete", "--root", str(root), "nope"])
    _one_error_line(missing.output, missing.exit_code, "error: no snapshot 'nope' in ")


# -- lab sharing ----------------------------------------------------------------------------


def _as_user(uid: int, gid: int, groups: list[int], state: Path, work) -> int:
    """Run ``work()`` in a forked child as ``uid`` (umask 022); its exit code (0: ok).

    Forked, not exec'd: the interpreter lives under /root, which other users cannot read;
    the parent has imported every module the work needs (it ran the same commands)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o022)
            os.environ["MIRROR_STATE_DIR"] = str(state)
            code = work()
        except BaseException as exc:  # noqa: BLE001 - reported by the exit code and stderr
            os.write(2, f"as uid {uid}: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _cli_code(*args: str) -> int:
    result = CliRunner().invoke(main, list(args))
    if result.exit_code:
        os.write(2, result.output.encode())
    return result.exit_code


# slow: the other users' commands run in children forked from this multithreaded test
# process (the interpreter under /root cannot be exec'd by them), and such a child crashed
# once in four full runs (SIGSEGV, before any mirror code could report); `pytest -m slow`
# runs it until it runs each user's commands from a fresh interpreter.
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                    reason="needs root to make a lab group and two users")
def test_every_folder_is_group_shared_so_a_second_member_can_write(tmp_path):
    import grp
    import pwd
    import uuid

    from mirror.sync import SyncOptions, sync

    tag = uuid.uuid4().hex[:6]
    group, alice, bob = f"mxlab{tag}", f"mxa{tag}", f"mxb{tag}"
    share = Path(f"/tmp/mirror-share-{tag}")
    made: list[list[str]] = []
    try:
        for cmd in (["groupadd", group], ["useradd", "-M", "-N", "-g", group, alice],
                    ["useradd", "-M", "-N", "-g", "nogroup", "-G", group, bob]):
            subprocess.run(cmd, check=True, capture_output=True)
            made.append(cmd)
        gid = grp.getgrnam(group).gr_gid
        users = {name: pwd.getpwnam(name) for name in (alice, bob)}
        share.mkdir(mode=0o777)
        share.chmod(0o1777)  # like /tmp: anyone may make a folder here
        for name, user in users.items():
            (share / f"state-{name}").mkdir()
            os.chown(share / f"state-{name}", user.pw_uid, user.pw_gid)
        root = share / "m"
        with serve(images=6, seed=15, private_fraction=0.0) as sb:
            # as root first, elsewhere: every module the children need is imported
            warm = tmp_path / "warm"
            assert sync(warm, sb.url, SyncOptions(blobs=frozenset({"thumbnail"}))).ok
            for args in (["snapshot", "create", "--root", str(warm), "w"],
                         ["gc", "--root", str(warm)], ["reindex", "--root", str(warm)],
                         ["lock", "status", "--root", str(warm)]):
                assert _cli_code(*args) == 0
            a = users[alice]
            assert _as_user(a.pw_uid, a.pw_gid, [gid], share / f"state-{alice}",
                            lambda: _cli_code("sync", "--root", str(root), "--url", sb.url,
                                              "--quiet", "--blobs", "thumbnail")) == 0
            folders = [root] + [Path(d) for d, _, _ in os.walk(root) if Path(d) != root]
            modes = {str(f.relative_to(share)): oct(f.stat().st_mode & 0o7777)
                     for f in folders}
            assert set(modes.values()) == {"0o2775"}, modes
            assert {"m", "m/isic", "m/isic/index", "m/isic/locks", "m/isic/store"} <= set(modes)
            assert {f.stat().st_gid for f in folders} == {gid}
            sb.mutate(add=3)
            b = users[bob]
            for args in (["sync", "--root", str(root), "--quiet", "--blobs", "thumbnail"],
                         ["snapshot", "create", "--root", str(root), "s"],
                         ["gc", "--root", str(root)], ["reindex", "--root", str(root)]):
                code = _as_user(b.pw_uid, b.pw_gid, [gid], share / f"state-{bob}",
                                lambda args=args: _cli_code(*args))
                assert code == 0, args
        snapshots = root / "isic" / "snapshots"
        assert oct(snapshots.stat().st_mode & 0o7777) == oct((snapshots / "s").stat().st_mode
                                                             & 0o7777) == "0o2775"
        status = json.loads(CliRunner().invoke(main, ["status", "--root", str(root), "--json"]
                                               ).output)
        assert status["objects"]["image"]["current"] == 9
    finally:
        shutil.rmtree(share, ignore_errors=True)
        for cmd in reversed(made):
            undo = ["groupdel", cmd[1]] if cmd[0] == "groupadd" else ["userdel", cmd[-1]]
            subprocess.run(undo, capture_output=True)


# -- reindex ---------------------------------------------------------------------------------


def test_reindex_brings_back_what_the_last_sync_published_and_costs_no_extra_requests(
        tmp_path):
    from mirror.api import Mirror
    from mirror.config import layout_for, load_config
    from mirror.store import ObjectStore

    root = tmp_path / "m"
    with serve(images=12, seed=16, private_fraction=0.0) as sb:
        assert _sync(root, sb.url).exit_code == 0
        gone = sb.mutate(update=2, remove=1)
        assert _sync(root, sb.url).exit_code == 0
        changed = gone["updated"][0]
        published = Mirror(root).image(changed).json
        # A version that was stored but never published (a dry run's, say), dated later:
        # the largest ``updated`` is not the current version.
        store = ObjectStore(layout_for(root, load_config(root)))
        store.put_json("image", changed, {**published, "updated": "2999-01-01T00:00:00+00:00",
                                          "name": "NOT-PUBLISHED"}, shard=changed[-1])
        assert CliRunner().invoke(main, ["sync", "--root", str(root), "--quiet",
                                         "--blobs", "thumbnail"]).exit_code == 0
        # the same mirror without a reindex: what the next sync costs it is "normal" (which
        # listings a sync re-checks depends on when each was last fetched)
        twin = tmp_path / "twin"
        shutil.copytree(root, twin, symlinks=True)
        done = CliRunner().invoke(main, ["reindex", "--root", str(root), "--json"])
        assert done.exit_code == 0, done.output
        m = Mirror(root)
        assert m.image(changed).json == published
        removed = json.loads(CliRunner().invoke(main, ["status", "--root", str(root),
                                                       "--json"]).output)["objects"]["image"]
        assert removed == {"current": 11, "removed": 1}
        after = CliRunner().invoke(main, ["sync", "--root", str(root), "--quiet", "--json",
                                          "--blobs", "thumbnail"])
        normal = json.loads(CliRunner().invoke(main, ["sync", "--root", str(twin), "--quiet",
                                                      "--json", "--blobs", "thumbnail"]
                                               ).output)["requests"]
    summary = json.loads(after.output)
    assert summary["requests"] == normal, (summary["requests"], normal)
    assert summary["objects"]["image"] == {"unchanged": 11}


# -- progress ------------------------------------------------------------------------------


def _subprocess_sync(root, url, *flags, env=None):
    cmd = [sys.executable, "-m", "mirror", *flags, "sync", "--root", str(root), "--url", url,
           "--blobs", "thumbnail"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})})


def test_progress_goes_to_a_terminal_only_plain_lines_on_request_nothing_with_q(tmp_path):
    with serve(images=40, seed=17, private_fraction=0.0) as sb:
        cron = _subprocess_sync(tmp_path / "a", sb.url)  # stderr redirected: nothing
        assert cron.returncode == 0, cron.stderr
        assert cron.stderr == "" and "\r" not in cron.stdout
        plain = _subprocess_sync(tmp_path / "b", sb.url, "--progress=plain",
                                 env={"MIRROR_PROGRESS_INTERVAL": "0"})
        assert plain.returncode == 0, plain.stderr
        verbose = _subprocess_sync(tmp_path / "c", sb.url, "-v")
        quiet = _subprocess_sync(tmp_path / "d", sb.url, "-q", "--progress=plain")
    lines = plain.stderr.splitlines()
    assert "\r" not in plain.stderr
    assert any(re.fullmatch(r"documents: \d+ document\(s\)(; done in [\d.]+ s)? "
                            r"\(annotation \d+, dataset \d+, image \d+(, segmentation \d+)?.*\)",
                            line) for line in lines), lines
    files = [line for line in lines if line.startswith("files: ")]
    assert files[-1].startswith("files: 40/40 file(s), ") and "/" in files[-1].split(",")[1]
    assert re.search(r"\d+ %, about \d+ s left", "\n".join(files)), files
    assert any(line.startswith("files: ") for line in verbose.stderr.splitlines())
    assert quiet.stderr == ""


def test_on_a_terminal_the_sync_draws_bars_with_the_bytes_total(tmp_path):
    """stderr a real terminal (a pty): tqdm bars (carriage returns) for the documents and
    the files, the bytes bar with its total; stdout keeps only the summary."""
    import fcntl
    import pty
    import struct
    import termios

    with serve(images=30, seed=19, private_fraction=0.0) as sb:
        leader, follower = pty.openpty()
        # a terminal 120 columns wide: a new pty has 0, where tqdm draws nothing
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        try:
            cmd = [sys.executable, "-m", "mirror", "sync", "--root", str(tmp_path / "m"),
                   "--url", sb.url, "--blobs", "thumbnail"]
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower,
                                     env={**os.environ, "PYTHONPATH": os.getcwd()})
            os.close(follower)
            drawn = b""
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                drawn += chunk
            out = child.communicate(timeout=120)[0].decode()
        finally:
            os.close(leader)
    assert child.returncode == 0, drawn[-2000:]
    text = drawn.decode(errors="replace")
    assert "\r" in text and "documents:" in text and "files:" in text, text[-2000:]
    # the bytes bar has a total (a percentage, done/total) and an ETA (elapsed<left)
    assert re.search(r"bytes: +\d+%\|.*\| [\d.]+[kM]?/[\d.]+[kM]? \[\d\d:\d\d<\d\d:\d\d",
                     text), text[-2000:]
    assert "\r" not in out and "thumbnail files" in out


def test_verify_gc_reindex_and_exports_report_progress(small_mirror, tmp_path):
    run = CliRunner().invoke
    root = _copy(small_mirror, tmp_path)
    env = {"MIRROR_PROGRESS_INTERVAL": "0"}
    for args, label in ((["verify"], "verify: "), (["gc"], "gc: scanning: "),
                        (["reindex"], "reindex: "),
                        (["export", "files", "--blobs", "thumbnail"], "export: ")):
        extra = [str(tmp_path / "out")] if args[0] == "export" else []
        done = run(main, ["--progress=plain", *args, "--root", str(root), *extra], env=env)
        assert done.exit_code == 0, done.output
        assert any(line.startswith(label) and "done in" in line
                   for line in done.output.splitlines()), (args, done.output)


def test_a_first_sync_publishes_the_index_while_it_runs(tmp_path):
    """Deterministic: the sandbox (in this process) holds each image download after the
    size sample's for a second, until a reader has seen a generation holding image files,
    so the sync cannot finish first and the reader cannot miss an interim publish. (Held,
    not stopped: a publish is never due sooner than four times the last one took, so the
    run must go on to reach its next one.)"""
    import threading

    root, sample = tmp_path / "m", 5
    with serve(images=40, seed=18, private_fraction=0.0) as sb:
        seen, lock, downloads = threading.Event(), threading.Lock(), [0]
        draw = sb.faults.draw

        def gated(path: str):
            if path.endswith("/download"):
                with lock:
                    downloads[0] += 1
                    n = downloads[0]
                if n > sample:
                    seen.wait(1.0)
            return draw(path)

        sb.faults.draw = gated
        child = subprocess.Popen(
            [sys.executable, "-m", "mirror", "sync", "--root", str(root), "--url", sb.url,
             "--quiet", "--workers", "2", "--blobs", "full"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd(), "MIRROR_PUBLISH_EVERY_OBJECTS": "1",
                 "MIRROR_PUBLISH_MIN_SECONDS": "0", "MIRROR_SIZE_SAMPLE_FILES": str(sample)})
        try:
            deadline, during = time.monotonic() + 60, None
            while time.monotonic() < deadline and child.poll() is None:
                done = CliRunner().invoke(main, ["status", "--root", str(root), "--json"])
                if done.exit_code == 0:
                    during = json.loads(done.output)
                    if during["blobs"].get("image", {}).get("files", 0) > 0:
                        break
                time.sleep(0.1)
            running = child.poll() is None
        finally:
            seen.set()
            child.wait(timeout=120)
    assert running, f"the sync ended before a reader saw an interim generation: {child.stderr}"
    assert during and during["objects"]["image"]["current"] == 40, during
    assert sample <= during["blobs"]["image"]["files"] < 40, during
    assert child.returncode == 0, child.stderr
    after = CliRunner().invoke(main, ["status", "--root", str(root), "--json"])
    assert json.loads(after.output)["blobs"]["image"]["files"] == 40


def test_before_the_first_publish_readers_are_told_to_wait_not_to_sync(tmp_path):
    """A reader during a first sync, before its first publish, is told that sync is
    running (pid, host) and publishes shortly, not to run 'mirror sync' (which its lease
    would refuse). The sandbox holds the sync's first listing until the readers have run."""
    import threading

    root = tmp_path / "m"
    with serve(images=5, seed=20, private_fraction=0.0) as sb:
        looked, draw = threading.Event(), sb.faults.draw
        sb.faults.draw = lambda path: (looked.wait(60), draw(path))[1]
        child = subprocess.Popen(
            [sys.executable, "-m", "mirror", "sync", "--root", str(root), "--url", sb.url,
             "--quiet", "--blobs", ""], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(root.glob("*/locks/writer.lease")):
                time.sleep(0.05)
            answers = [CliRunner().invoke(main, [*args, "--root", str(root)])
                       for args in (["query", "--count"], ["sql", "SELECT 1"], ["query"],
                                    ["status"])]
        finally:
            looked.set()
            child.wait(timeout=60)
    assert child.returncode == 0, child.stderr
    for done in answers[:3]:
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and re.fullmatch(
            rf"error: no index published yet under {re.escape(str(root))}: its first sync "
            r"\(pid \d+ on \S+\) publishes one every few minutes "
            r"\(MIRROR_PUBLISH_EVERY_SECONDS\); try again shortly", lines[0]), done.output
    assert "mirror sync" not in answers[3].output, answers[3].output


# -- the docs are true -----------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"


def test_the_python_api_page_names_ids_the_demo_mirror_holds():
    """The demo mirrors every image of the sandbox with seed 0 (``mirror/demo.py``)."""
    from mirror.sources.isic_v1.sandbox.data import Archive

    ids = set(re.findall(r'm\.image\("([0-9a-f]{24})"\)', (DOCS / "python-api.md").read_text()))
    assert ids, "the page shows an image by _id"
    for page in (DOCS / "query.md", README):  # any quoted _id the docs show
        ids |= set(re.findall(r'"([0-9a-f]{24})"', page.read_text()))
    archive = Archive(200, seed=0, private_fraction=0.0)
    served = {archive.image_id(i): f"ISIC_{i:07d}" for i in range(200)}
    assert ids <= set(served), ids - set(served)
    assert served["52c35a8094545b38f85804f0"] == "ISIC_0000000"  # the sandbox's naming


def test_documented_command_lines_parse():
    """Every ``mirror ...`` line in the README and docs/sync.md names options that exist
    where they are written (``-v`` is a group option: ``mirror -v sync``, not ``sync -v``)."""
    lines = []
    for page in (README, DOCS / "sync.md", DOCS / "operations.md"):
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.DOTALL):
            lines += [line.split("#")[0].strip() for line in block.splitlines()
                      if line.strip().startswith("mirror ")]
    assert len(lines) > 10
    for line in lines:
        if "[" in line or "…" in line or "..." in line:
            continue  # a usage synopsis, not a command to run
        args = shlex.split(line)[1:]
        result = CliRunner().invoke(main, [*args, "--help"] if "--help" not in args else args)
        assert "No such option" not in result.output and result.exit_code == 0, (line,
                                                                               result.output)


def test_readme_says_how_to_get_mirror_on_path():
    text = README.read_text()
    assert ". .venv/bin/activate" in text
    assert "mirror sync -v" not in (DOCS / "sync.md").read_text()
