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
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.errors import MirrorError

if TYPE_CHECKING:
    from mirror.api import Mirror

BASE_FIELDS = ["isic_id", "attribution", "copyright_license"]
LICENSES = ("CC-0", "CC-BY", "CC-BY-NC")  # the templates shipped in licenses/
CSV_CHUNK = 1000  # rows per written piece: a 200,000-image CSV is never held whole


@dataclass
class Survey:
    """What one pass over the records tells isic-cli's files: the metadata keys, the
    attributions with their image counts, the licences."""

    keys: set[str] = field(default_factory=set)
    attributions: Counter = field(default_factory=Counter)
    licenses: set[str] = field(default_factory=set)
    records: int = 0


def survey(records: Iterable[dict]) -> Survey:
    found = Survey()
    for record in records:
        meta = record["metadata"]
        found.keys |= set(meta["acquisition"]) | set(meta["clinical"])
        found.attributions[record["attribution"]] += 1
        found.licenses.add(record["copyright_license"])
        found.records += 1
    return found


def flat_row(record: dict) -> dict:
    """isic-cli's row of one record: the base fields, then acquisition and clinical
    merged (clinical wins a shared key, as in ``_extract_metadata``)."""
    meta = record["metadata"]
    return {"isic_id": record["isic_id"], "attribution": record["attribution"],
            "copyright_license": record["copyright_license"],
            **meta["acquisition"], **meta["clinical"]}


def metadata_csv_chunks(records: Iterable[dict], keys: set[str]) -> Iterator[bytes]:
    """isic-cli's ``metadata.csv`` in pieces: the base fields, then the sorted ``keys``
    (every acquisition and clinical key of the records, from :func:`survey`); Excel dialect
    (``\r\n``, minimal quoting), UTF-8 without BOM, cells as ``str()`` of the JSON values
    (``True``, ``55``, ``0.50``), absent empty."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, BASE_FIELDS + sorted(keys))
    writer.writeheader()
    for count, record in enumerate(records, 1):
        writer.writerow(flat_row(record))
        if count % CSV_CHUNK == 0:
            yield out.getvalue().encode("utf-8")
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode("utf-8")


def metadata_csv(records: Iterable[dict]) -> bytes:
    """isic-cli's whole ``metadata.csv`` of ``records`` (see :func:`metadata_csv_chunks`)."""
    records = list(records)
    return b"".join(metadata_csv_chunks(records, survey(records).keys))


def ranked_attributions(counts: Counter) -> list[str]:
    """Distinct attributions by image count (descending), then by name; Anonymous last."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _ in sorted(ranked, key=lambda kv: kv[0] == "Anonymous")]


def attributions(records: Iterable[dict]) -> list[str]:
    return ranked_attributions(Counter(record["attribution"] for record in records))


def attribution_txt(records: Iterable[dict]) -> bytes:
    """isic-cli's ``attribution.txt``: the attributions joined by a blank line, no final
    newline (as written on POSIX)."""
    return "\n\n".join(attributions(records)).encode("utf-8")


def attribution_bytes(counts: Counter) -> bytes:
    return "\n\n".join(ranked_attributions(counts)).encode("utf-8")


def license_text(name: str) -> bytes:
    """The archive's licence text (``zip-download/license-file/<name>/``), byte for byte."""
    if name not in LICENSES:  # a record's licence never names a path
        raise MirrorError(f"unknown licence {name!r}; the archive has CC-0, CC-BY, CC-BY-NC")
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
    from mirror.sources.isic_v2.exports import blob_roles, write_layout

    if collection is not None:
        isic_ids = mirror.collection_images(collection)
    elif isic_ids is None:
        isic_ids = mirror.ids("image")
    done = write_layout(mirror, Path(dest), list(isic_ids), blob_roles(["full"]),
                        "copy" if copy else "hard")
    return {"images": done["images"], "files": done["files"],
            "missing_files": len(done["missing"]), "licenses": done["licenses"]}
