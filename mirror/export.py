"""Exports for people and training scripts: a metadata table and a plain folder of files.

Both read only the index and the store. What an export holds is the source's (its
``exports`` hooks module, e.g. the ISIC v1 source's ``exports``: the columns, the
provenance file, the file names); the formats (CSV, JSON lines, tables, Parquet) and the
cell rules are shared here, so every source writes them the same way.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.errors import ExportDestError, MirrorError
from mirror.files import staged_folder, write_bytes_atomic
from mirror.sources.base import source_hooks

FORMATS = ("table", "csv", "json", "jsonl", "ids")
CHUNK = 500  # ids per statement

if TYPE_CHECKING:
    from mirror.api import Mirror


def exports_of(mirror: Mirror):
    """The export hooks of ``mirror``'s source."""
    return source_hooks(mirror.config.source, "exports")


def metadata_table(mirror: Mirror, selection: Any, columns: list[str] | None = None
                   ) -> tuple[list[str], Iterator[list[Any]]]:
    """The header and rows of the metadata table of ``selection`` (the source's columns)."""
    return exports_of(mirror).metadata_table(mirror, selection, columns)


def export_metadata(mirror: Mirror, out: Path, selection: Any,
                    columns: list[str] | None = None, replace: bool = False) -> dict:
    """Write the metadata table (CSV or Parquet, by ``out``'s suffix) and its provenance
    (:func:`attribution_path`). An existing table is replaced only with ``replace``."""
    out = Path(out)
    existing = [p for p in (out, attribution_path(out)) if p.exists()]
    if existing and not replace:
        raise ExportDestError(f"{existing[0]} exists; choose another name, or pass --replace "
                              "to overwrite it")
    return exports_of(mirror).export_metadata(mirror, out, selection, columns)


def write_metadata(out: Path, header: list[str], rows: Iterator[list[Any]],
                   attribution: bytes) -> Path:
    """Write a source's metadata table to ``out`` (CSV or Parquet, by its suffix) and
    ``attribution`` to :func:`attribution_path` beside it, each atomically; returns that
    path. The sources' ``export_metadata`` hooks build the rows and the text; this writes."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise MirrorError(f"cannot tell the format of {out.name}: name it .csv or .parquet")
    if out.suffix == ".parquet":
        write_parquet(out, header, rows)
    else:
        write_bytes_atomic(out, csv_bytes(header, rows))
    path = attribution_path(out)
    write_bytes_atomic(path, attribution)
    return path


def attribution_path(out: Path) -> Path:
    """The provenance file of the table ``out``: ``OUT.attribution.txt`` beside it, so two
    exports in one folder keep one each."""
    out = Path(out)
    return out.with_name(f"{out.stem}.attribution.txt")


def export_files(mirror: Mirror, dest: Path, selection: Any, *args: Any,
                 replace: bool = False, **options: Any) -> dict:
    """Place the selected objects' files under ``dest`` (links or copies).

    The export is made in a folder beside ``dest`` and moved into place when complete; a
    non-empty ``dest`` is refused unless ``replace``, which swaps it atomically."""
    with staged_folder(Path(dest), replace) as staging:
        return exports_of(mirror).export_files(mirror, staging, selection, *args, **options)


def unique_stems(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """``{id: file stem}`` for ``(id, stem)`` pairs, every stem unique, and the renamed ids.

    Two objects may share a name (the archive does not forbid it), and one file would then
    silently replace the other. Every stem that occurs more than once (compared
    case-folded: macOS and SMB folders are case-insensitive) becomes ``<stem>_<id>``, for
    all its objects: which one keeps the plain name never depends on the order.
    """
    counts: dict[str, int] = {}
    for _, stem in pairs:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    out, renamed = {}, []
    for object_id, stem in pairs:
        if counts[stem.casefold()] > 1:
            out[object_id] = f"{stem}_{object_id}"
            renamed.append(object_id)
        else:
            out[object_id] = stem
    return out, renamed


def object_table(mirror: Mirror, kind: str, ids: list[str], columns: list[str] | None = None
                 ) -> tuple[list[str], Iterator[list[Any]]]:
    """The header and rows of selected objects of any kind (a projection table name):
    dotted fields of their documents (default ``_id`` and, when the kind has names,
    ``name``). Sources with their own table (ISIC images) use :func:`metadata_table`."""
    from sqlalchemy import select

    from mirror.ingest import model_of

    table = mirror.projection.table(kind)
    columns = columns or [c for c in ("_id", "name") if c in mirror.projection.fields(table)]
    model, where = model_of(mirror.source.kind_of_table(table))

    def rows() -> Iterator[list[Any]]:
        with mirror._engine.connect() as conn:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                docs = dict(conn.execute(select(model.id, model.doc).where(
                    model.id.in_(chunk), *where)).all())
                for object_id in chunk:
                    doc = docs[object_id]
                    doc = json.loads(doc) if isinstance(doc, str) else doc
                    yield [field_value(doc, c) for c in columns]
    return columns, rows()


def export_files_lines(mirror: Mirror, summary: dict, dest: Path) -> list[str]:
    return exports_of(mirror).export_files_lines(summary, dest)


def field_value(doc: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``doc``, or None when any step is missing."""
    for key in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def cell(value: Any) -> str:
    """A CSV cell: empty for null, ``true``/``false``, compact JSON for lists and objects."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def formatted(header: list[str], rows: Iterator[list[Any]], fmt: str,
              ids: list[str] | None = None) -> Iterator[str]:
    """The table as text in ``fmt`` (one of :data:`FORMATS`), in pieces to print."""
    if fmt == "ids":
        yield from (f"{i}\n" for i in ids or [])
    elif fmt == "csv":
        yield from (chunk.decode() for chunk in csv_bytes(header, rows))
    elif fmt == "jsonl":
        yield from (json.dumps(dict(zip(header, row, strict=True)), ensure_ascii=False) + "\n"
                    for row in rows)
    elif fmt == "json":
        objects = [dict(zip(header, row, strict=True)) for row in rows]
        yield json.dumps(objects, indent=2, ensure_ascii=False) + "\n"
    elif fmt == "table":
        from tabulate import tabulate

        yield tabulate([[cell(v) for v in row] for row in rows], headers=header) + "\n"
    else:
        raise MirrorError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def csv_bytes(header: list[str], rows: Iterator[list[Any]]) -> Iterator[bytes]:
    """Deterministic UTF-8 CSV (``\\n`` line ends, minimal quoting), in chunks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for count, row in enumerate(rows, 1):
        writer.writerow([cell(v) for v in row])
        if count % 1000 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def write_parquet(path: Path, header: list[str], rows: Iterator[list[Any]]) -> None:
    """The table as Parquet; a column of mixed types is written as text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MirrorError("Parquet export needs pyarrow: pip install 'mirror[parquet]'") from None
    data = list(zip(*rows, strict=True)) or [[] for _ in header]
    arrays = [_arrow_column(pa, list(values)) for values in data]
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays, names=header), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _arrow_column(pa, values: list[Any]):
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int, float}:
        return pa.array([None if v is None else float(v) for v in values])
    if len(kinds) == 1 and kinds <= {bool, str, int, float}:
        return pa.array(values)
    return pa.array([None if v is None else cell(v) for v in values], type=pa.string())


# -- attribution ---------------------------------------------------------------------------

