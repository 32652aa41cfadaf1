"""Value sets: for each value of each field, the set of images holding it.

``image_fields`` answers "which images have diagnosis = melanoma" with an index range, but
a broad selection (tens of thousands of images) then makes the database walk tens of
thousands of index entries and build sets of text ids to intersect. Value sets store that
answer ready-made: each current image gets a *position* (its rank in ``_id`` order), and
each ``(path, elem, kind, value)`` of ``image_fields`` gets one ``value_sets`` row holding
the positions of its images, as a bitmap when that is smaller (common values) or as sorted
uint32 positions (rare values). A selection then reads a few rows, combines them with numpy
(or, and, not), and turns positions back into ids from ``image_blocks``. A path with more
distinct values than :func:`max_values` (names, dates, ids) keeps its numbers and text in
value runs instead (:mod:`mirror.valueruns`), sorted, so that a range reads whole runs.

The tables are derived data, like a search engine's inverted index: every writer that
changes ``image_fields`` marks them stale (``meta`` key ``value_sets``) in the same
transaction, and :func:`refresh` rebuilds them before the index is published. A reader
that finds them stale (or absent, in an index older than this module) uses
``image_fields`` instead, with the same answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import bindparam, delete, func, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mirror.fields import BOOL, NULL, NUMBER, TEXT
from mirror.index import ImageBlock, ImageField, Meta, ValueRun, ValueSet
from mirror.valueruns import build_runs, stretches

BLOCK = 1024  # ids per image_blocks row: a narrow selection reads few blocks
ANY = "*"  # the kind of the row holding every image with a non-null value at a path
UNCOVERED = "!"  # the kind of the one row of a path with too many distinct values
RANGED = "r"  # beside UNCOVERED: the path's numbers and text are in value runs
MIN_MAX_VALUES = 1000  # see max_values
META_KEY, FRESH, STALE = "value_sets", "fresh", "stale"
SEPARATOR = "\x1f"  # never in an id (ids are checked to be [A-Za-z0-9-])
_SEP = SEPARATOR.encode()
_INSERT_BATCH = 1000  # rows of up to 12.5 KB (a bitmap at 100,000 images)


def mark_stale(session: Session) -> None:
    """Record that ``image_fields`` changed (call in the transaction that changes them)."""
    session.merge(Meta(key=META_KEY, value=STALE))


# Statements every selection runs, built once: building one costs more than running it
_STATE = select(Meta.value).where(Meta.key == META_KEY)
_KINDS = select(ValueSet.elem, ValueSet.kind).distinct().where(ValueSet.path == bindparam("path"))
_BLOCKS = select(ImageBlock.block, ImageBlock.width, ImageBlock.ids).order_by(ImageBlock.block)
_BLOCK_RANGE = _BLOCKS.where(ImageBlock.block.between(bindparam("lo"), bindparam("hi")))


def fresh_count(conn: Connection) -> int | None:
    """The number of image positions when the value sets describe the current
    ``image_fields``; None when they are stale (or the index predates them)."""
    state = conn.execute(_STATE).scalar()
    if not state or not state.startswith(FRESH + ":"):
        return None
    return int(state.partition(":")[2])


def is_fresh(conn: Connection) -> bool:
    """True when the value sets describe the current ``image_fields``."""
    return fresh_count(conn) is not None


def refresh(session: Session) -> bool:
    """Rebuild the value sets when they are stale; True when it did."""
    if fresh_count(session.connection()) is not None:
        return False
    count = rebuild(session.connection())
    session.merge(Meta(key=META_KEY, value=f"{FRESH}:{count}"))
    return True


def rebuild(conn: Connection) -> int:
    """Replace the tables with sets and runs computed from ``image_fields``; returns the
    number of images (positions)."""
    for table in (ValueSet, ValueRun, ImageBlock):
        conn.execute(delete(table))
    ids = conn.execute(select(ImageField.image_id).where(
        ImageField.path == "_id", ImageField.elem.is_(False))).scalars().all()
    ids.sort()  # Python's order is the one positions follow, whatever the collation
    blocks = [_block(b, ids[start:start + BLOCK])
              for b, start in enumerate(range(0, len(ids), BLOCK))]
    for batch in _batches(blocks, 50):
        conn.execute(insert(ImageBlock), batch)
    sorted_ids = np.array(ids, dtype=str)
    for path in conn.execute(select(ImageField.path).distinct()).scalars().all():
        sets, runs = _path_sets(conn, path, sorted_ids)
        for table, rows in ((ValueSet, sets), (ValueRun, runs)):
            for batch in _batches(rows, _INSERT_BATCH):
                conn.execute(insert(table), batch)
    return len(ids)


def _block(number: int, ids: list[str]) -> dict:
    """An image_blocks row: the ids as UTF-8, each followed by the separator. ``width`` is
    the byte length of every id when they are all equal (ObjectIds: 24), so that numpy can
    pick records out of the block without splitting it."""
    encoded = [i.encode() for i in ids]
    widths = {len(i) for i in encoded}
    return {"block": number, "ids": b"".join(i + _SEP for i in encoded),
            "width": widths.pop() if len(widths) == 1 else 0}


def joined_ids(conn: Connection, column):
    """The aggregate that joins ``column``'s ids into one string (SQLite or PostgreSQL):
    one row to split in Python is far cheaper than a row per id."""
    aggregate = func.string_agg if conn.dialect.name == "postgresql" else func.group_concat
    return aggregate(column, SEPARATOR)


def max_values(images: int) -> int:
    """Distinct values beyond which a path's numbers and text get value runs instead of value
    sets (names, dates, ids): one row per image would cost more than it saves."""
    return max(MIN_MAX_VALUES, images // 50)


def _path_sets(conn: Connection, path: str, sorted_ids: np.ndarray
               ) -> tuple[list[dict], list[dict]]:
    """The value set rows of one path (one grouped pass over each covering index, the ids
    of each value aggregated by the database), and its value runs when it has too many
    distinct values for sets."""
    n, out, limit = sorted_ids.size, [], max_values(sorted_ids.size)
    present = np.zeros(n, bool)
    numeric = ImageField.kind.in_([NUMBER, BOOL])
    for column, kinds in ((ImageField.num, numeric), (ImageField.txt, ~numeric)):
        groups = conn.execute(
            select(ImageField.elem, ImageField.kind, column,
                   joined_ids(conn, ImageField.image_id))
            .where(ImageField.path == path, kinds)
            .group_by(ImageField.elem, ImageField.kind, column).limit(limit + 1)).all()
        if len(out) + len(groups) > limit:
            return _ranged_path(conn, path, sorted_ids)
        for elem, kind, value, joined in groups:
            positions = _positions(joined, sorted_ids)
            if not elem and kind != NULL:
                present[positions] = True
            out.append(_row(path, elem, kind, {column.key: value}, positions, n))
    if present.any():
        out.append(_row(path, False, ANY, {}, np.flatnonzero(present), n))
    return out, []


def _ranged_path(conn: Connection, path: str, sorted_ids: np.ndarray
                 ) -> tuple[list[dict], list[dict]]:
    """A path with too many distinct values: its numbers and text go into value runs
    (:mod:`mirror.valueruns`), with one set per kind saying who holds one; its other kinds
    (booleans, nulls, lists, objects, long text) have few values and get ordinary sets.

    The ``UNCOVERED`` marker stays, so that a reader that predates value runs answers from
    ``image_fields``; ``RANGED`` tells newer readers the runs are there."""
    n, present = sorted_ids.size, np.zeros(sorted_ids.size, bool)
    sets = [_marker(path, UNCOVERED), _marker(path, RANGED)]
    runs, holders = build_runs(conn, path, sorted_ids)
    for (elem, kind), positions in holders.items():
        sets.append(_row(path, elem, kind, {}, positions, n))
        if not elem:
            present[positions] = True
    groups = conn.execute(
        select(ImageField.elem, ImageField.kind, ImageField.num, ImageField.txt,
               joined_ids(conn, ImageField.image_id))
        .where(ImageField.path == path, ImageField.kind.notin_([NUMBER, TEXT]))
        .group_by(ImageField.elem, ImageField.kind, ImageField.num, ImageField.txt)).all()
    for elem, kind, num, txt, joined in groups:
        positions = _positions(joined, sorted_ids)
        if not elem and kind != NULL:
            present[positions] = True
        sets.append(_row(path, elem, kind, {"num": num, "txt": txt}, positions, n))
    if present.any():
        sets.append(_row(path, False, ANY, {}, np.flatnonzero(present), n))
    return sets, runs


def _positions(joined: str, sorted_ids: np.ndarray) -> np.ndarray:
    """The sorted positions, each once (a list may hold a value twice), of joined ids."""
    return np.unique(np.searchsorted(sorted_ids, np.array(joined.split(SEPARATOR), dtype=str)))


def _marker(path: str, kind: str) -> dict:
    return {"path": path, "elem": False, "kind": kind, "num": None, "txt": None,
            "count": 0, "dense": False, "positions": b""}


def _row(path: str, elem: bool, kind: str, value: dict, positions: np.ndarray, n: int) -> dict:
    dense = positions.size * 32 >= n  # a bitmap is n/8 bytes, a list 4 bytes an image
    if dense:
        bits = np.zeros(n, bool)
        bits[positions] = True
        blob = np.packbits(bits, bitorder="little").tobytes()
    else:
        blob = positions.astype("<u4").tobytes()  # sorted by the caller
    return {"path": path, "elem": bool(elem), "kind": kind, "num": None, "txt": None, **value,
            "count": int(positions.size), "dense": dense, "positions": blob}


def _batches(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# -- reading ---------------------------------------------------------------------------------

def kinds_at(conn: Connection, path: str) -> tuple[set[tuple[bool, str]], bool] | None:
    """The ``(elem, kind)`` pairs the value sets of ``path`` hold, and whether its numbers
    and text are in value runs instead (one index range); None for a path with neither."""
    pairs = {(bool(e), k) for e, k in conn.execute(_KINDS, {"path": path})}
    ranged = (False, RANGED) in pairs
    if (False, UNCOVERED) in pairs and not ranged:
        return None
    return pairs - {(False, UNCOVERED), (False, RANGED)}, ranged


def mask_of(conn: Connection, count: int, where) -> np.ndarray:
    """The union of the value sets ``where`` selects, as a bitmap over positions (see
    :func:`no_bits`): stored bitmaps are or-ed as they are, positions are set bit by bit."""
    bits, sparse = no_bits(count), []
    for is_dense, blob in conn.execute(select(ValueSet.dense, ValueSet.positions).where(where)):
        if is_dense:
            bits |= np.frombuffer(blob, np.uint8)
        else:
            sparse.append(blob)
    if sparse:
        set_bits(bits, np.frombuffer(b"".join(sparse), "<u4"), count)
    return bits


# A selection combines criteria as bitmaps packed 8 positions a byte (numpy's little bit
# order, as stored), so its working memory is an eighth of a bool array's: 12.5 KB per
# criterion at 100,000 images. Bits past ``count`` in the last byte mean nothing.

def no_bits(count: int) -> np.ndarray:
    """An empty bitmap of ``count`` positions."""
    return np.zeros((count + 7) // 8, np.uint8)


def all_bits(count: int) -> np.ndarray:
    """A full bitmap of ``count`` positions."""
    return np.full((count + 7) // 8, 0xFF, np.uint8)


def set_bits(bits: np.ndarray, positions: np.ndarray, count: int) -> None:
    """Set the bits of ``positions`` (any order, repeats allowed)."""
    if positions.size * 8 > count:  # many: scattering into bools, then packing, is faster
        flags = np.zeros(count, bool)
        flags[positions] = True
        bits |= np.packbits(flags, bitorder="little")
    else:  # a few: sorted (often runs already sorted, which a stable sort merges)
        _set_bits(bits, np.sort(positions, kind="stable"))


def _set_bits(bits: np.ndarray, positions: np.ndarray) -> None:
    """Set the bits of sorted ``positions``, one or-reduction per byte they touch."""
    if positions.size == 0:
        return
    byte = positions >> 3
    bit = np.left_shift(np.uint8(1), (positions & 7).astype(np.uint8))
    starts = np.flatnonzero(np.concatenate(([True], byte[1:] != byte[:-1])))
    bits[byte[starts]] |= np.bitwise_or.reduceat(bit, starts)


def positions_of(bits: np.ndarray, count: int) -> np.ndarray:
    """The set positions of a bitmap, sorted, unpacked a slice at a time."""
    found, step = [], 8192  # bytes: 65,536 positions, 64 KB unpacked
    for start in range(0, bits.size, step):
        piece = bits[start:start + step]
        if piece.any():
            flags = np.unpackbits(piece, count=min(step * 8, count - start * 8),
                                  bitorder="little")
            positions = np.flatnonzero(flags.view(bool))  # 5x faster on bool than on uint8
            positions += start * 8
            found.append(positions)
    if not found:
        return np.empty(0, np.int64)
    return found[0] if len(found) == 1 else np.concatenate(found)


def ids_at(conn: Connection, positions: np.ndarray) -> Sequence[str]:
    """The ids at sorted ``positions``, reading only the blocks that hold them.

    The chosen records of each block are picked as bytes (numpy) in this transaction; the
    Python strings, most of the cost of a broad selection, are made only when asked for
    (see :class:`IdList`)."""
    if positions.size == 0:
        return []
    per_block = np.bincount(positions // BLOCK)
    blocks = np.flatnonzero(per_block).tolist()
    starts = np.concatenate(([0], np.cumsum(per_block))).tolist()  # block b's positions:
    counts = per_block.tolist()  # positions[starts[b]:starts[b + 1]]
    picked, widths = bytearray(), set()  # appended to: no second copy, as a join makes
    for block, width, records in _read_blocks(conn, blocks):
        if block >= len(counts) or not counts[block]:
            continue
        if not (width and counts[block] * (width + 1) == len(records)):  # not the whole block
            here = positions[starts[block]:starts[block + 1]] - block * BLOCK
            records = _pick(records, width, here)
        picked += records
        widths.add(width)
    if len(widths) == 1 and 0 not in widths:
        return IdList(picked, widths.pop())
    ids = picked.decode().split(SEPARATOR)
    ids.pop()  # the empty string after the last separator
    return ids


def _read_blocks(conn: Connection, blocks: list[int]):
    """The ``image_blocks`` rows of sorted ``blocks``: one range query when they are
    consecutive (a broad selection), a few ranges, or a list."""
    spans = list(stretches(blocks))
    if len(spans) == 1:
        return conn.execute(_BLOCK_RANGE, {"lo": spans[0][0], "hi": spans[0][1]})
    if len(spans) <= 8:  # a few ranges of blocks: far cheaper to bind than a long IN list
        return conn.execute(_BLOCKS.where(or_(*(ImageBlock.block.between(a, b)
                                                 for a, b in spans))))
    if len(blocks) < 200:
        return conn.execute(_BLOCKS.where(ImageBlock.block.in_(blocks)))
    return conn.execute(_BLOCKS)  # read them all: one range instead of a long IN list


def _pick(records: bytes, width: int, offsets: np.ndarray) -> bytes:
    """The records at ``offsets`` of one block (each id followed by the separator)."""
    if width:
        table = np.frombuffer(records, f"S{width + 1}")
        return records if offsets.size == table.size else table[offsets].tobytes()
    ids = records.split(_SEP)
    return b"".join(ids[o] + _SEP for o in offsets.tolist())


class IdList(Sequence[str]):
    """A sorted, read-only list of ids of one width, kept as the bytes of ``image_blocks``.

    A broad selection finds 100,000 images in a few milliseconds, and making 100,000 Python
    strings would cost as much again, so they are made only when asked for: ``len`` and
    ``in`` (a binary search) need none, an index or a slice decodes only what it covers,
    and iterating decodes a block at a time. ``list(ids)`` gives a plain list."""

    __slots__ = ("_records", "_width")
    _DECODE = 4096  # ids decoded at once while iterating

    def __init__(self, records: bytes | bytearray, width: int):
        if width <= 0 or len(records) % (width + 1):
            raise ValueError("records must be ids of one width, each followed by the separator")
        self._records, self._width = records, width

    def __len__(self) -> int:
        return len(self._records) // (self._width + 1)

    def __getitem__(self, index):
        step = self._width + 1
        if isinstance(index, slice):
            start, stop, stride = index.indices(len(self))
            if stride != 1:
                return self.tolist()[index]
            return IdList(self._records[start * step:max(start, stop) * step], self._width)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("IdList index out of range")
        return self._records[index * step:index * step + self._width].decode()

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), self._DECODE):
            yield from self[start:start + self._DECODE].tolist()

    def __contains__(self, key: object) -> bool:
        try:
            needle = key.encode() if isinstance(key, str) else b""
        except UnicodeEncodeError:  # a lone surrogate: no id holds one
            return False
        if len(needle) != self._width:
            return False
        needle += _SEP
        table = np.frombuffer(self._records, f"S{self._width + 1}")
        at = int(np.searchsorted(table, needle))
        return bool(at < table.size and table[at] == needle)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdList):
            return (self._width, self._records) == (other._width, other._records)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def tolist(self) -> list[str]:
        """All the ids as a plain list of strings."""
        if not self._records:
            return []
        ids = self._records.decode().split(SEPARATOR)
        ids.pop()  # the empty string after the last separator
        return ids

    def __repr__(self) -> str:
        head = ", ".join(repr(i) for i in self[:3])
        more = f", ... ({len(self)} ids)" if len(self) > 3 else ""
        return f"IdList([{head}{more}])"
