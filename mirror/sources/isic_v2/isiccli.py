"""isic-cli's output layout, written from a mirror (research note ``isic_v2_api.md`` §9).

``isic image download OUTDIR`` leaves::

    OUTDIR/ISIC_0000000.jpg ...   # isic_id + the URL's suffix, bytes as served
    OUTDIR/metadata.csv           # §9.3, byte for byte
    OUTDIR/attribution.txt        # §9.4
    OUTDIR/licenses/<L>.txt       # §9.5: the archive's licence texts

:func:`export_isic_cli` writes the same from the mirror, offline, so a pipeline written
around isic-cli's folder runs on a mirror unchanged. isic-cli orders the CSV rows by
publish time, which no record carries; a collection's membership (``isic_ids``) is in that
order, so exporting a collection reproduces ``isic image download -c ID`` exactly;
otherwise rows follow the order given (default: by isic_id).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.errors import MirrorError
from mirror.files import write_bytes_atomic

if TYPE_CHECKING:
    from mirror.api import Mirror

BASE_FIELDS = ["isic_id", "attribution", "copyright_license"]


def metadata_csv(records: Iterable[dict]) -> bytes:
    """isic-cli's ``metadata.csv``: the base fields, then the sorted union of every
    acquisition and clinical key; Excel dialect (``\\r\\n``, minimal quoting), UTF-8 without
    BOM, cells as ``str()`` of the JSON values (``True``, ``55``, ``0.50``), absent empty."""
    fields: set[str] = set()
    rows = []
    for record in records:
        meta = record["metadata"]
        fields |= set(meta["acquisition"]) | set(meta["clinical"])
        rows.append({"isic_id": record["isic_id"], "attribution": record["attribution"],
                     "copyright_license": record["copyright_license"],
                     **meta["acquisition"], **meta["clinical"]})
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, BASE_FIELDS + sorted(fields))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def attributions(records: Iterable[dict]) -> list[str]:
    """Distinct attributions by image count (descending), then by name; Anonymous last."""
    counts = Counter(record["attribution"] for record in records)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _ in sorted(ranked, key=lambda kv: kv[0] == "Anonymous")]


def attribution_txt(records: Iterable[dict]) -> bytes:
    """isic-cli's ``attribution.txt``: the attributions joined by a blank line, no final
    newline (as written on POSIX)."""
    return "\n\n".join(attributions(records)).encode("utf-8")


def license_text(name: str) -> bytes:
    """The archive's licence text (``zip-download/license-file/<name>/``), byte for byte."""
    try:
        return resources.files("mirror.sources.isic_v2").joinpath("licenses", f"{name}.txt"
                                                                  ).read_bytes()
    except FileNotFoundError:
        raise MirrorError(f"unknown licence {name!r}; the archive has CC-0, CC-BY, CC-BY-NC"
                          ) from None


def export_isic_cli(mirror: Mirror, dest: Path | str, isic_ids: list[str] | None = None,
                    collection: str | int | None = None, copy: bool = False) -> dict:
    """Write isic-cli's layout for the given images (or a collection's, in its order; or
    every current image) under ``dest``: files hard-linked (``copy``: copied), then
    ``metadata.csv``, ``attribution.txt`` and ``licenses/``. Images whose file is not
    mirrored are listed in the CSV (as isic-cli lists failed downloads) and counted."""
    dest = Path(dest)
    if collection is not None:
        isic_ids = mirror.collection_images(collection)
    elif isic_ids is None:
        isic_ids = mirror.ids("image")
    records = [mirror.document("image", isic_id) for isic_id in isic_ids]
    dest.mkdir(parents=True, exist_ok=True)
    placed = missing = 0
    for record in records:
        relpath = mirror._blob_relpath(record["isic_id"], "image")
        if relpath is None:
            missing += 1
            continue
        suffix = Path(relpath).suffix or ".jpg"
        _place(mirror.store.path(relpath), dest / f"{record['isic_id']}{suffix}", copy)
        placed += 1
    write_bytes_atomic(dest / "metadata.csv", metadata_csv(records))
    write_bytes_atomic(dest / "attribution.txt", attribution_txt(records))
    licenses = sorted({r["copyright_license"] for r in records})
    (dest / "licenses").mkdir(exist_ok=True)
    for name in licenses:
        write_bytes_atomic(dest / "licenses" / f"{name}.txt", license_text(name))
    return {"images": len(records), "files": placed, "missing_files": missing,
            "licenses": licenses}


def _place(source: Path, target: Path, copy: bool) -> None:
    if target.exists():
        target.unlink()
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system: copy instead
    shutil.copyfile(source, target)
