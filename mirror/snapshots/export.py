"""Write a snapshot as a folder, a tar file or a BagIt bag, byte-identical on every run.

Determinism comes from the members (sorted, bytes from pinned hashes, see
:mod:`mirror.snapshots.payload`) and from fixing everything a container would take from the
machine: tar members carry mtime = the snapshot's content time (``content_epoch``: never the
wall clock), mode 0644, owner 0:0 and no user or group names; the bag's ``Bagging-Date`` is
the date of that time. Every
export is built beside its destination under a temporary name and renamed into place, so
a reader (or a killed export) never leaves a half-written dataset at ``DEST``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from mirror import progress
from mirror.errors import IntegrityError, MirrorError
from mirror.files import remove_dead_temps, temp_beside
from mirror.snapshots.manifest import Snapshot, content_epoch, snapshot_source
from mirror.snapshots.payload import Member
from mirror.sources.base import spec_of

FORMATS = ("dir", "tar", "bagit")
BAG_ALGORITHMS = ("sha256", "sha512")


def _epoch(snap: Snapshot) -> int:
    return content_epoch(snap)


def _checked(member: Member, extra: list | tuple = ()) -> Iterator[bytes]:
    """The member's bytes, checked against its pinned SHA-256 and size as they stream."""
    hasher, size = hashlib.sha256(), 0
    for chunk in member.read():
        hasher.update(chunk)
        for other in extra:
            other.update(chunk)
        size += len(chunk)
        yield chunk
    if hasher.hexdigest() != member.sha256 or size != member.size:
        raise IntegrityError(f"{member.path}: bytes do not match the manifest; "
                             "run 'mirror snapshot verify'")


def _write_tree(folder: Path, members: list[Member], hashers: dict | None = None) -> None:
    for member in members:
        path = folder / member.path
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = [hashers.setdefault(member.path, {a: hashlib.new(a) for a in BAG_ALGORITHMS})[a]
                 for a in BAG_ALGORITHMS] if hashers is not None else []
        with open(path, "wb") as handle:
            for chunk in _checked(member, extra):
                handle.write(chunk)
        os.chmod(path, 0o644)


def _publish_folder(tmp: Path, dest: Path) -> None:
    if dest.exists():
        raise MirrorError(f"{dest} exists; export into a new path (an export never "
                          "overwrites one)")
    os.replace(tmp, dest)


def export_dir(snap: Snapshot, members: list[Member], dest: Path) -> None:
    tmp = temp_beside(dest)
    try:
        _write_tree(tmp, members)
        _publish_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_tar(snap: Snapshot, members: list[Member], dest: Path) -> None:
    if dest.suffix != ".tar":
        raise MirrorError(f"name the tar export *.tar (got {dest.name}): compressed tar "
                          "output depends on the zlib build, so it is not byte-identical")
    tmp = temp_beside(dest)
    mtime = _epoch(snap)
    try:
        with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w",
                                                   format=tarfile.PAX_FORMAT) as tar:
            for member in members:
                info = tarfile.TarInfo(f"{snap.name}/{member.path}")
                info.size, info.mtime, info.mode = member.size, mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, _ChunkReader(_checked(member)))
        if dest.exists():
            raise MirrorError(f"{dest} exists; export into a new path")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _ChunkReader:
    """A file-like ``read`` over an iterator of chunks (what ``tarfile.addfile`` wants)."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.buffer = chunks, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        if size < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def _bag_path(path: str) -> str:
    # RFC 8493 section 2.1.3: CR, LF and % in manifest paths are percent-encoded.
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def export_bagit(snap: Snapshot, members: list[Member], dest: Path) -> None:
    tmp = temp_beside(dest)
    try:
        hashers: dict = {}
        _write_tree(tmp / "data", members, hashers)
        tags = {"bagit.txt": b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
                "bag-info.txt": _bag_info(snap, members)}
        for algorithm in BAG_ALGORITHMS:
            tags[f"manifest-{algorithm}.txt"] = "".join(
                f"{hashers[m.path][algorithm].hexdigest()}  data/{_bag_path(m.path)}\n"
                for m in members).encode()
        for name, data in tags.items():
            (tmp / name).write_bytes(data)
        for algorithm in BAG_ALGORITHMS:
            (tmp / f"tagmanifest-{algorithm}.txt").write_bytes("".join(
                f"{hashlib.new(algorithm, tags[n]).hexdigest()}  {n}\n"
                for n in sorted(tags)).encode())
        _publish_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bag_info(snap: Snapshot, members: list[Member]) -> bytes:
    octets = sum(m.size for m in members)
    lines = [
        ("Bag-Software-Agent", f"mirror ({snap.manifest['format']})"),
        ("Bagging-Date", datetime.fromtimestamp(_epoch(snap), UTC).date().isoformat()),
        ("External-Description", f"Snapshot {snap.name} of {snap.manifest['source']['base_url']}"),
        ("External-Identifier", f"sha256:{snap.manifest['snapshot_id']}"),
        ("Payload-Oxum", f"{octets}.{len(members)}"),
        ("Source-Organization", spec_of(snapshot_source(snap)).organization),
    ]
    return "".join(f"{label}: {value}\n" for label, value in lines).encode()


WRITERS = {"dir": export_dir, "tar": export_tar, "bagit": export_bagit}


class _reported(list):
    """The members, reporting progress the first time a writer goes through them (the
    one that writes them; BagIt reads the list again for its manifests)."""

    def __init__(self, members: list[Member], label: str):
        super().__init__(members)
        self.label, self.reported = label, False

    def __iter__(self):
        if self.reported:
            yield from list.__iter__(self)
            return
        self.reported = True
        with progress.task(self.label, total=len(self), unit="file",
                           total_bytes=sum(m.size for m in list.__iter__(self))) as step:
            for member in list.__iter__(self):
                yield member
                step.update(1, member.size)


def export_snapshot(snap: Snapshot, members: list[Member], dest: Path, fmt: str) -> dict:
    """Write ``members`` at ``dest`` in ``fmt``; returns counts and bytes."""
    if fmt not in WRITERS:
        raise MirrorError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    dest = Path(dest)
    if dest.exists():
        raise MirrorError(f"{dest} exists; export into a new path (an export never "
                          "overwrites one)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest.parent, dest.name)
    WRITERS[fmt](snap, _reported(members, f"export {fmt}"), dest)
    return {"files": len(members), "bytes": sum(m.size for m in members), "path": str(dest),
            "format": fmt,
            "renamed": sorted(m.path for m in members if m.renamed_from is not None)}
