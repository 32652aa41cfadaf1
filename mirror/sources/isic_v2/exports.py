"""ISIC v2 exports: the metadata table and a folder in isic-cli's layout.

``mirror export files`` writes what ``isic image download`` leaves (research note §9,
:mod:`.isiccli`): ``ISIC_n.jpg`` (the served bytes, hard-linked from the store), then
``metadata.csv``, ``attribution.txt`` and ``licenses/<L>.txt`` byte for byte, so a pipeline
written around isic-cli's folder runs on a mirror export unchanged. Every export carries
each image's ``copyright_license`` and ``attribution`` (CSV columns, and the ranked
``attribution.txt``). The folder's rows follow the archive's publish order, as isic-cli's
do: no record carries it, so each complete sync keeps the listing's order (the ``listing``
object ``images``); images it did not see follow by isic_id. The metadata table follows
the selection (by isic_id).

Everything reads the index and the store; nothing is fetched. Documents are read in chunks
of :data:`CHUNK`, twice (one pass finds the columns, one writes the rows), so an export of
the whole archive never holds every record at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mirror import progress
from mirror.errors import MirrorError, MissingObjectError
from mirror.export import attribution_path, csv_bytes, field_value, write_parquet
from mirror.files import place, remove_dead_temps, write_bytes_atomic
from mirror.index import Blob, ObjectRow
from mirror.sources.isic_v2.isiccli import (
    BASE_FIELDS,
    attribution_bytes,
    flat_row,
    license_text,
    metadata_csv_chunks,
    survey,
)
from mirror.sources.isic_v2.spec import ISIC_ID

if TYPE_CHECKING:
    from mirror.api import Mirror

CHUNK = 500
#: ``--blobs`` choice -> (store role, file-name suffix); isic-cli writes only the full image
FILES = {"full": ("image", ""), "thumbnail": ("thumbnail", "_thumbnail")}
DEFAULT_BLOBS = ("full",)


def documents(mirror: Mirror, ids: Iterable[str]) -> Iterator[dict]:
    """The current image records of ``ids``, in that order, read in chunks."""
    ids = list(ids)
    with mirror._engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            docs = dict(conn.execute(select(ObjectRow.id, ObjectRow.doc).where(
                ObjectRow.kind == "image", ObjectRow.id.in_(chunk))).all())
            for isic_id in chunk:
                doc = docs[isic_id]
                yield json.loads(doc) if isinstance(doc, str) else doc


# -- the metadata table --------------------------------------------------------------------

def metadata_table(mirror: Mirror, selection: Any, columns: list[str] | None = None
                   ) -> tuple[list[str], Iterator[list[Any]]]:
    """isic-cli's columns (``isic_id, attribution, copyright_license`` and every
    acquisition and clinical key of the selected records, sorted), or the dotted
    ``columns`` given (``metadata.clinical.diagnosis_1``)."""
    if columns:
        return list(columns), ([field_value(doc, c) for c in columns]
                               for doc in documents(mirror, selection.ids))
    header = BASE_FIELDS + sorted(survey(documents(mirror, selection.ids)).keys)

    def rows() -> Iterator[list[Any]]:
        for doc in documents(mirror, selection.ids):
            row = flat_row(doc)
            yield [row.get(c) for c in header]
    return header, rows()


def export_metadata(mirror: Mirror, out: Path, selection: Any,
                    columns: list[str] | None = None) -> dict:
    """``out`` (``.csv`` or ``.parquet``) and ``OUT.attribution.txt`` (isic-cli's ranking
    of the selected images' attributions) beside it."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise MirrorError(f"cannot tell the format of {out.name}: name it .csv or .parquet")
    header, rows = metadata_table(mirror, selection, columns)
    if out.suffix == ".parquet":
        write_parquet(out, header, rows)
    else:
        write_bytes_atomic(out, csv_bytes(header, rows))
    attribution = attribution_path(out)
    write_bytes_atomic(attribution, attribution_bytes(
        survey(documents(mirror, selection.ids)).attributions))
    return {"images": len(selection), "columns": len(header), "path": str(out),
            "attribution": str(attribution)}


# -- isic-cli's folder ---------------------------------------------------------------------

def blob_roles(blobs: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(choice, role, suffix)`` of each ``--blobs`` choice, or a one-line error."""
    unknown = sorted(b for b in blobs if b not in FILES)
    if unknown:
        raise MirrorError(f"ISIC API v2 mirrors have no {unknown[0]!r} files; use "
                          f"--blobs {','.join(FILES)}")
    return [(b, *FILES[b]) for b in sorted(blobs)]


def export_files(mirror: Mirror, dest: Path, selection: Any,
                 blobs: Iterable[str] = DEFAULT_BLOBS, link: str = "hard") -> dict:
    """isic-cli's layout of ``selection`` under ``dest``; files not mirrored are counted
    and listed (their rows stay in ``metadata.csv``, as isic-cli keeps failed downloads)."""
    return write_layout(mirror, Path(dest), publish_order(mirror, selection.ids),
                        blob_roles(blobs), link)


def publish_order(mirror: Mirror, ids: list[str]) -> list[str]:
    """``ids`` in the archive's publish order (isic-cli's row order), as the last complete
    listing saw it; ids it did not hold (a scoped mirror) follow, by isic_id."""
    try:
        order = mirror.document("listing", "images").get("isic_ids") or []
    except MissingObjectError:
        return list(ids)
    position = {isic_id: n for n, isic_id in enumerate(order)}
    return sorted(ids, key=lambda i: (position.get(i, len(position)), i))


def write_layout(mirror: Mirror, dest: Path, ids: list[str],
                 roles: list[tuple[str, str, str]], link: str) -> dict:
    """The files of ``ids`` (in that order) and isic-cli's three made files."""
    dest.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest)
    summary: dict[str, Any] = {"images": len(ids), "files": 0, "linked": {}, "missing": [],
                               "skipped_names": [], "licenses": []}
    with mirror._engine.connect() as conn, \
            progress.task("export", total=len(ids), unit="image") as step:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            paths = {(r[0], r[1]): r[2] for r in conn.execute(
                select(Blob.object_id, Blob.role, Blob.path).where(
                    Blob.object_id.in_(chunk), Blob.role.in_([r for _, r, _ in roles])))}
            for isic_id in chunk:
                _place_files(mirror, dest, isic_id, roles, paths, link, summary)
                step.update(1, detail=f"{summary['files']} file(s)")
    found = survey(documents(mirror, ids))
    write_bytes_atomic(dest / "metadata.csv",
                       metadata_csv_chunks(documents(mirror, ids), found.keys))
    write_bytes_atomic(dest / "attribution.txt", attribution_bytes(found.attributions))
    (dest / "licenses").mkdir(exist_ok=True)  # isic-cli makes it even when empty
    summary["licenses"] = sorted(found.licenses)
    for name in summary["licenses"]:
        write_bytes_atomic(dest / "licenses" / f"{name}.txt", license_text(name))
    return summary


def _place_files(mirror: Mirror, dest: Path, isic_id: str, roles: list, paths: dict,
                 link: str, summary: dict) -> None:
    if not ISIC_ID.fullmatch(isic_id):  # the index only holds checked ids; never trust
        summary["skipped_names"].append(isic_id)
        return
    for choice, role, suffix in roles:
        relpath = paths.get((isic_id, role))
        if relpath is None:
            summary["missing"].append(f"{isic_id} ({choice})")
            continue
        # isic-cli names a file by the URL's suffix; the store's is the served type's
        done = place(mirror.store.path(relpath), dest / f"{isic_id}{suffix}{Path(relpath).suffix}",
                     link)
        summary["linked"][done] = summary["linked"].get(done, 0) + 1
        summary["files"] += 1


def export_files_lines(summary: dict, dest: Path) -> list[str]:
    """What ``mirror export files`` prints."""
    how = ", ".join(f"{n} {mode}" for mode, n in sorted(summary["linked"].items())) or "none"
    lines = [f"exported {summary['files']} file(s) of {summary['images']} image(s) to {dest} "
             f"({how}), with metadata.csv, attribution.txt and licenses/ as isic-cli writes "
             "them"]
    if summary["missing"]:
        shown = ", ".join(summary["missing"][:5])
        lines.append(f"not mirrored, so not exported: {len(summary['missing'])} file(s) "
                     f"({shown}{', ...' if len(summary['missing']) > 5 else ''}); "
                     "run 'mirror sync' with --blobs including them")
    if summary["skipped_names"]:
        lines.append(f"skipped {len(summary['skipped_names'])} image(s) whose ids are unsafe "
                     "as file names")
    return lines
