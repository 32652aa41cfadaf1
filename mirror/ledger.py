"""The ledger: an append-only record, beside the index, of what each generation published.

The index is a cache that ``mirror reindex`` rebuilds from the store. But the store keeps
every version of every document, and the newest ``updated`` is not always the version the
archive serves now (an update can carry an earlier date); and the sync's bookkeeping (the
digests of the listings it last fetched) is not in the store at all, so a sync after a
reindex would list everything again. The ledger keeps both, one JSON object a line in
``<ns>/ledger/versions.jsonl``::

    {"g": 7, "k": "image", "id": "5436e3...", "sha": "9f2c..."}     current version
    {"g": 9, "k": "image", "id": "5436e3...", "removed": true}      marked removed
    {"g": 7, "listing": "segmentation:5436e3...", "digest": "...", "count": 2,
     "at": "2026-12-02T17:41:10.123456+00:00"}

A listing's ``at`` (when the sync fetched it) is kept because the re-check rotation goes
stalest first: a reindex that dated every listing alike would change which ones the next
sync re-checks, and with them what it costs. A listing is written again when any of the
three changes (ISIC v1 re-checks a seventh of its listings a run).

After each publish the writer appends what differs from the ledger's replay (so a
publish that died before its append is made good by the next one). Lines are appended
with ``O_APPEND`` and fsynced; a torn last line (a crash mid-append) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mirror.index import Listing
from mirror.ingest import model_of
from mirror.layout import Layout, shared_mkdir
from mirror.sources.base import SourceSpec

FILE = "versions.jsonl"
STREAM_ROWS = 10_000  # index rows read at a time
APPEND_LINES = 65_536  # appended at a time: a first publish of a million objects holds
# one chunk of entries, not a million (any prefix of the lines is a valid ledger)


@dataclass
class Ledger:
    """The ledger replayed: the last word on each object and listing."""

    documents: dict[tuple[str, str], str | None] = field(default_factory=dict)  # None: removed
    # key -> (digest, count, when it was fetched; None in lines written before "at" was)
    listings: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)


def path_of(layout: Layout) -> Path:
    return layout.ledger / FILE


def replay(layout: Layout, compact: bool = False) -> Ledger:
    """Read the ledger (empty when there is none: a mirror made before it existed).

    ``compact``: documents keyed by :func:`_word` of ``(kind, id)`` with :func:`_word` of
    the version as the value (16 bytes each instead of a tuple and two strings), which is
    all :func:`record` compares; a million-object ledger replays in a third of the memory."""
    ledger = Ledger()
    try:
        handle = open(path_of(layout), "rb")  # a line at a time, not read whole: a
    except FileNotFoundError:  # million-line ledger's bytes would sit beside its replay
        return ledger
    with handle:
        _replay_lines(handle, ledger, compact)
    return ledger


def _word(*parts: str) -> bytes:
    """A 128-bit digest standing for ``parts`` (a collision is out of reach)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()


def _replay_lines(lines, ledger: Ledger, compact: bool = False) -> None:
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn line from a crash mid-append
        if not isinstance(entry, dict):
            continue
        if "listing" in entry:
            ledger.listings[entry["listing"]] = (entry.get("digest", ""), entry.get("count", 0),
                                                 entry.get("at"))
        elif "k" in entry and "id" in entry:
            sha = None if entry.get("removed") else entry.get("sha")
            if compact:
                ledger.documents[_word(str(entry["k"]), str(entry["id"]))] = (
                    None if sha is None else _word(str(sha)))
            else:
                ledger.documents[(sys.intern(str(entry["k"])), entry["id"])] = sha


def record(layout: Layout, session: Session, spec: SourceSpec, generation: int) -> int:
    """Append what generation ``generation`` holds that the ledger does not say yet;
    returns the number of lines appended."""
    known = replay(layout, compact=True)
    lines: list[dict] = []
    appended = 0
    for kind in spec.kinds:
        model, where = model_of(kind)
        # yield_per: streamed in chunks (an ORM result is otherwise read whole first, a
        # million rows beside the replay above)
        for object_id, sha, removed in session.execute(
                select(model.id, model.doc_sha256, model.removed).where(*where)
                .execution_options(yield_per=STREAM_ROWS)):
            key = _word(kind.name, object_id)
            if key not in known.documents and removed:
                continue  # never published current here: nothing to remember
            if known.documents.get(key, b"-") != (None if removed else _word(sha)):
                entry = {"g": generation, "k": kind.name, "id": object_id}
                entry.update({"removed": True} if removed else {"sha": sha})
                lines.append(entry)
                if len(lines) >= APPEND_LINES:
                    _append(layout, lines)
                    appended, lines = appended + len(lines), []
    for key, digest, count, at in session.execute(select(
            Listing.key, Listing.digest, Listing.count, Listing.fetched_at)):
        if known.listings.get(key) != (digest, count, at):
            lines.append({"g": generation, "listing": key, "digest": digest, "count": count,
                          "at": at})
    if lines:
        _append(layout, lines)
    return appended + len(lines)


def _append(layout: Layout, entries: list[dict]) -> None:
    shared_mkdir(layout.ledger, layout.root)
    data = b"".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                    for e in entries)
    fd = os.open(path_of(layout), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o664)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o664)  # whatever the umask: every member of the group appends
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # end a line torn by a crash; replay skips its remains
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
