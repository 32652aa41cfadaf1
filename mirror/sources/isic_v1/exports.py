"""ISIC v1 exports: the metadata table (isic-cli's columns) and a plain folder of files.

Both read only the index and the store. Every export carries provenance: ``attribution``
and ``copyright_license`` columns in the table, and an ``attribution.txt`` that lists each
dataset with its license, attribution and image count (the official isic-cli writes one
for its downloads; we write one for every export).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from mirror import progress
from mirror.errors import MirrorError
from mirror.export import (
    csv_bytes,
    field_value,
    unique_stems,
    write_metadata,
)
from mirror.files import place, remove_dead_temps, write_bytes_atomic
from mirror.index import Blob
from mirror.projection import BOOLEAN, NULL, NUMBER, TEXT, literal, quote
from mirror.sources.isic_v1.client import BLOB_KINDS
from mirror.sources.isic_v1.models import Dataset, Image, Segmentation
from mirror.store import UnsafeNameError, safe_name

if TYPE_CHECKING:
    from mirror.api import ImageSelection, Mirror

FIXED_COLUMNS = ["isic_id", "attribution", "copyright_license", "dataset"]
_DEFAULT_GROUPS = ("meta.acquisition.", "meta.clinical.")
CHUNK = 500
from mirror.sources.isic_v1.snapshot import FILE_SUFFIX  # noqa: E402 - one naming rule


def blob_roles(blobs: list[str] | tuple[str, ...]) -> list[str]:
    """The store roles of ``--blobs`` choices (``full`` is role ``image``), or a clear error."""
    unknown = [b for b in blobs if b not in BLOB_KINDS]
    if unknown:
        raise MirrorError(f"unknown blob kind {unknown[0]!r}; use {', '.join(BLOB_KINDS)}")
    return [BLOB_KINDS[b].role for b in blobs]


# -- the metadata table --------------------------------------------------------------------

def default_columns(mirror: Mirror, selection: ImageSelection) -> list[str]:
    """``isic_id, attribution, copyright_license, dataset`` plus every acquisition and
    clinical field any selected image has (a scalar or a null), sorted (the columns
    isic-cli writes)."""
    projection = mirror.projection
    fields = projection.fields("images")
    candidates = {path: [quote(name) for kind, name in kinds.items()
                         if kind in (TEXT, NUMBER, BOOLEAN, NULL)]
                  for path, kinds in fields.items()
                  if path.startswith(_DEFAULT_GROUPS) and path.count(".") == 2}
    candidates = {path: columns for path, columns in candidates.items() if columns}
    present = []
    if candidates and len(selection):
        tests = ", ".join(f"bool_or({' OR '.join(f'{c} IS NOT NULL' for c in columns)})"
                          for columns in candidates.values())
        positions = projection.positions_of("images", selection.ids).tolist()
        with projection.lock:
            found = projection.execute(
                f"SELECT {tests} FROM read_parquet({literal(projection.file('images'))}, "
                "file_row_number = true) WHERE file_row_number IN "
                "(SELECT unnest(?::BIGINT[]))", [positions]).fetchone()
        present = [path for path, has in zip(candidates, found, strict=True) if has]
    return FIXED_COLUMNS + sorted(present, key=lambda p: (p.split(".")[2], p))


def _header(columns: list[str]) -> list[str]:
    """Short names (``age_approx``) for meta fields unless two groups share one."""
    short = [c.split(".")[-1] if c.startswith(_DEFAULT_GROUPS) else c for c in columns]
    return [s if short.count(s) == 1 else c for s, c in zip(short, columns, strict=True)]


def _special(column: str, name: str, dataset: tuple | None) -> Any:
    ds_name, license_, attribution = dataset or (None, None, None)
    return {"isic_id": name, "attribution": attribution, "copyright_license": license_,
            "dataset": ds_name}[column]


def metadata_rows(mirror: Mirror, selection: ImageSelection, columns: list[str]
                  ) -> Iterator[list[Any]]:
    """One list of values per selected image, in the selection's order, read in chunks."""
    with mirror._engine.connect() as conn:
        for start in range(0, len(selection.ids), CHUNK):
            chunk = selection.ids[start:start + CHUNK]
            found = {row[0]: row for row in conn.execute(
                select(Image.id, Image.name, Image.doc, Dataset.name, Dataset.license,
                       Dataset.attribution)
                .outerjoin(Dataset, Dataset.id == Image.dataset_id)
                .where(Image.id.in_(chunk)))}
            for image_id in chunk:
                _, name, doc, *dataset = found[image_id]
                doc = json.loads(doc) if isinstance(doc, str) else doc
                yield [_special(c, name, dataset) if c in FIXED_COLUMNS else field_value(doc, c)
                       for c in columns]


def metadata_table(mirror: Mirror, selection: ImageSelection,
                   columns: list[str] | None = None) -> tuple[list[str], Iterator[list[Any]]]:
    """The header and the rows of the metadata table of ``selection``.

    Without ``columns``: :func:`default_columns`, meta fields named by their last part."""
    if columns:
        return list(columns), metadata_rows(mirror, selection, columns)
    columns = default_columns(mirror, selection)
    return _header(columns), metadata_rows(mirror, selection, columns)




def attribution_rows(mirror: Mirror, selection: ImageSelection) -> list[tuple]:
    """``(count, dataset, license, attribution)`` per dataset, most images first."""
    counts: dict[str | None, int] = {}
    with mirror._engine.connect() as conn:
        for start in range(0, len(selection.ids), CHUNK):
            chunk = selection.ids[start:start + CHUNK]
            for dataset_id, count in conn.execute(
                    select(Image.dataset_id, func.count()).where(Image.id.in_(chunk))
                    .group_by(Image.dataset_id)):
                counts[dataset_id] = counts.get(dataset_id, 0) + count
        datasets = {row[0]: row[1:] for row in conn.execute(
            select(Dataset.id, Dataset.name, Dataset.license, Dataset.attribution))}
    rows = [(n, *datasets.get(ds, (ds or "unknown dataset", None, None)))
            for ds, n in counts.items()]
    return sorted(rows, key=lambda r: (-r[0], str(r[1])))


def attribution_text(rows: list[tuple]) -> str:
    lines = ["Images in this export, by dataset (count, dataset, license, attribution):", ""]
    for count, name, license_, attribution in rows:
        lines.append(f"{count}\t{name}\t{license_ or 'license not recorded'}\t"
                     f"{attribution or 'Anonymous'}")
    return "\n".join(lines) + "\n"


def export_metadata(mirror: Mirror, out: Path, selection: ImageSelection,
                    columns: list[str] | None = None) -> dict:
    """Write ``out`` (``.csv`` or ``.parquet``) and ``OUT.attribution.txt`` beside it."""
    header, rows = metadata_table(mirror, selection, columns)
    attribution = write_metadata(
        out, header, rows, attribution_text(attribution_rows(mirror, selection)).encode())
    return {"images": len(selection), "columns": len(header), "path": str(out),
            "attribution": str(attribution)}


# -- a folder of files ---------------------------------------------------------------------

def _blob_paths(conn, ids: list[str], roles: list[str]) -> dict[tuple[str, str], str]:
    rows = conn.execute(select(Blob.object_id, Blob.role, Blob.path)
                        .where(Blob.object_id.in_(ids), Blob.role.in_(roles)))
    return {(r[0], r[1]): r[2] for r in rows}


def _masks(conn, ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    rows = conn.execute(select(Segmentation.image_id, Segmentation.id, Blob.path)
                        .join(Blob, (Blob.object_id == Segmentation.id) & (Blob.role == "mask"))
                        .where(Segmentation.image_id.in_(ids), Segmentation.removed.is_(False))
                        .order_by(Segmentation.id))
    out: dict[str, list[tuple[str, str]]] = {}
    for image_id, seg_id, path in rows:
        out.setdefault(image_id, []).append((seg_id, path))
    return out


def _targets(name: str, image_id: str, blobs: list[str], paths: dict, masks: dict
             ) -> Iterator[tuple[str, str | None]]:
    """``(file name in DEST, store relpath or None when not mirrored, kind)`` per file."""
    for kind in blobs:
        if kind == "masks":
            for seg_id, relpath in masks.get(image_id, []):
                yield f"{name}_mask_{safe_name(seg_id)}.png", relpath, kind
            continue
        role = BLOB_KINDS[kind].role
        relpath = paths.get((image_id, role))
        ext = Path(relpath).suffix if relpath else ""
        yield f"{name}{FILE_SUFFIX[role]}{ext}", relpath, kind


def export_files(mirror: Mirror, dest: Path, selection: ImageSelection,
                 blobs: list[str], link: str = "hard") -> dict:
    """``DEST/<name>.jpg`` (and masks, superpixels beside it), ``metadata.csv`` and
    ``attribution.txt``. Files not mirrored are counted and listed, never invented."""
    roles = blob_roles(blobs)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest)
    summary: dict[str, Any] = {"images": len(selection), "files": 0, "linked": {},
                               "missing": [], "skipped_names": [], "renamed": []}
    stems, summary["renamed"] = unique_stems(
        [(i, stem) for i, n in zip(selection.ids, selection.names, strict=True)
         if (stem := _stem(n)) is not None])
    with mirror._engine.connect() as conn, \
            progress.task("export", total=len(selection), unit="image") as step:
        for start in range(0, len(selection.ids), CHUNK):
            ids = selection.ids[start:start + CHUNK]
            names = selection.names[start:start + CHUNK]
            paths = _blob_paths(conn, ids, roles)
            masks = _masks(conn, ids) if "masks" in blobs else {}
            for image_id, name in zip(ids, names, strict=True):
                _export_image(mirror, dest, image_id, name, stems.get(image_id), blobs,
                              paths, masks, link, summary)
                step.update(1, detail=f"{summary['files']} file(s)")
    header, rows = metadata_table(mirror, selection)
    write_bytes_atomic(dest / "metadata.csv", csv_bytes(header, rows))
    write_bytes_atomic(dest / "attribution.txt",
                       attribution_text(attribution_rows(mirror, selection)).encode())
    return summary


def _stem(name: str) -> str | None:
    try:
        return safe_name(name)
    except UnsafeNameError:
        return None


def _export_image(mirror: Mirror, dest: Path, image_id: str, name: str, stem: str | None,
                  blobs: list[str], paths: dict, masks: dict, link: str, summary: dict
                  ) -> None:
    try:
        if stem is None:
            raise UnsafeNameError(name)
        targets = list(_targets(stem, image_id, blobs, paths, masks))
    except UnsafeNameError:
        summary["skipped_names"].append(image_id)
        return
    for file_name, relpath, kind in targets:
        if relpath is None:
            summary["missing"].append(f"{name} ({kind})")
            continue
        done = place(mirror.store.path(relpath), dest / file_name, link)
        summary["linked"][done] = summary["linked"].get(done, 0) + 1
        summary["files"] += 1


def export_files_lines(summary: dict, dest: Path) -> list[str]:
    """What ``mirror export files`` prints."""
    how = ", ".join(f"{n} {mode}" for mode, n in sorted(summary["linked"].items())) or "none"
    lines = [f"exported {summary['files']} file(s) of {summary['images']} image(s) to {dest} "
             f"({how}), with metadata.csv and attribution.txt"]
    if summary["missing"]:
        shown = ", ".join(summary["missing"][:5])
        lines.append(f"not mirrored, so not exported: {len(summary['missing'])} file(s) "
                     f"({shown}{', ...' if len(summary['missing']) > 5 else ''}); "
                     "run 'mirror sync' with --blobs including them")
    if summary.get("renamed"):
        lines.append(f"{len(summary['renamed'])} image(s) share a name with another: "
                     "their files are named <name>_<id> (see metadata.csv for each id)")
    if summary["skipped_names"]:
        lines.append(f"skipped {len(summary['skipped_names'])} image(s) whose names are unsafe "
                     "as file names")
    return lines
