"""Every environment variable and tunable of the mirror, in one place (``docs/settings.md``).

Values are read when asked for, not at import, so a test or a long-lived process that
changes the environment sees the change. Each setting names its variable, its default and
why the default is what it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mirror.errors import MirrorError


@dataclass(frozen=True)
class Setting:
    """One tunable: its environment variable, default and meaning."""

    env: str
    default: float
    doc: str

    def get(self) -> float:
        raw = os.environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        try:
            return float(raw)
        except ValueError:
            raise MirrorError(f"{self.env}={raw!r} is not a number; unset it or give a "
                              f"number (default {self.default:g})") from None


REMOVAL_MAX_FRACTION = Setting(
    "MIRROR_REMOVAL_MAX_FRACTION", 0.10,
    "A sync that would mark more than this share of a kind's objects removed (and more "
    "than REMOVAL_MIN_COUNT of them) stops before marking any: one bad listing (a broken "
    "proxy, a token the archive ignores) must not empty a mirror. --allow-removals confirms.")
REMOVAL_MIN_COUNT = Setting(
    "MIRROR_REMOVAL_MIN_COUNT", 2,
    "Removals up to this many are always allowed (the share test alone would refuse "
    "removing 1 object of 5).")
REMOVAL_MAX_COUNT = Setting(
    "MIRROR_REMOVAL_MAX_COUNT", 100,
    "A sync that would mark more objects than this removed stops, whatever the share.")
RECHECK_PERIOD = Setting(
    "MIRROR_RECHECK_PERIOD", 7,
    "Listings a sync cannot compare in bulk (ISIC v1's segmentations, one request per "
    "image) are re-checked in rotation, stalest first: every object once per this many "
    "runs, and none left unchecked longer than this many days. 1 checks all every run; "
    "'mirror sync --full' checks all once. The archive changes these without a sign.")

MAX_DOCUMENT_DEPTH = Setting(
    "MIRROR_MAX_DOCUMENT_DEPTH", 100,
    "Deepest nesting of objects and lists one archive document may have (ISIC documents "
    "nest under 10 levels, DICOM JSON headers under 40); a deeper one is a failed item "
    "naming its field, and the rest of the sync goes on. A whole response deeper than "
    "MIRROR_MAX_JSON_DEPTH is refused before it is parsed.")
MAX_DECODE_PIXELS = Setting(
    "MIRROR_MAX_DECODE_PIXELS", 100_000_000,
    "Largest image (width x height, from the file's header) the mirror decodes: in sync "
    "(superpixel PNGs, dimension checks), verify and the image accessors. The largest ISIC "
    "images are about 40 megapixels; a 0.5 MB PNG can declare 13000 x 13000 and cost 2 GB.")
MAX_SUPERPIXEL_MAP_BYTES = Setting(
    "MIRROR_MAX_SUPERPIXEL_MAP_BYTES", 2**30,
    "Largest superpixel pixel map (labels x largest label's pixel count x 4 bytes) "
    "img.superpixels builds; a valid 14 KB label PNG can ask for 15 GiB. Real ones need "
    "a few to a few hundred MB.")
GC_REMOVED_GRACE_DAYS = Setting(
    "MIRROR_GC_REMOVED_GRACE_DAYS", 30,
    "'mirror gc' keeps the files of an object the archive removed for this many days after "
    "the sync that marked it removed (and for as long as any snapshot pins them): a removal "
    "that was a mistake (a broken listing confirmed with --allow-removals) can be undone by "
    "the next sync without downloading anything. 0 lets gc delete them at once.")

SIZE_SAMPLE_FILES = Setting(
    "MIRROR_SIZE_SAMPLE_FILES", 8,
    "Files of each role fetched first when the index holds none of that role yet, so that "
    "the plan's size (and the disk-space check) comes from what this archive's files weigh "
    "per pixel, not from a rule of thumb. 0 skips the sample.")

PUBLISH_EVERY_OBJECTS = Setting(
    "MIRROR_PUBLISH_EVERY_OBJECTS", 5000,
    "A sync publishes an index generation after this many more objects and files, so "
    "readers can query a long first sync while it runs (each publish copies the index; "
    "the next waits at least four times as long as the last took).")
PUBLISH_EVERY_SECONDS = Setting(
    "MIRROR_PUBLISH_EVERY_SECONDS", 300,
    "... or after this many seconds since the last publish, whichever comes first.")
PUBLISH_MIN_SECONDS = Setting(
    "MIRROR_PUBLISH_MIN_SECONDS", 30,
    "No publish during a run sooner than this after the run began or after its last "
    "publish, whatever the object count: a sync shorter than this publishes once, at its "
    "end (an interim publish of 5,800 IDC instances cost a 17 s sync about 1 s).")
PROGRESS_INTERVAL = Setting(
    "MIRROR_PROGRESS_INTERVAL", 10,
    "Seconds between plain progress lines (--progress=plain, or -v when stderr is not a "
    "terminal).")

DIRECT_DOWNLOADS = Setting(
    "MIRROR_DIRECT_DOWNLOADS", 1,
    "1: public file URLs (ISIC's bucket) are fetched through obstore, with the HTTP in Rust "
    "outside the GIL, when it is installed (the 'fast' extra) and no proxy or CA bundle "
    "applies; 0: every download goes through requests.")
ZIP_MEMORY_BYTES = Setting(
    "MIRROR_ZIP_MEMORY_BYTES", 8 * 2**20,
    "TCIA: a series zip up to this many bytes is held in memory while it is checked and "
    "unpacked; a larger one goes to an unnamed temporary file beside the store (nothing "
    "is left behind by a kill). Each fetch worker holds at most one.")

IDC_CATALOG_ENV = "MIRROR_IDC_CATALOG"
"""A folder of idc-index-data Parquet files (``idc_index.parquet``, ...) that IDC syncs read
instead of the installed package's (a sandbox's catalog, an older release kept aside);
``mirror sync --catalog DIR`` overrides it."""

#: Variables that are not numbers, listed for the docs page.
ENVIRONMENT = {
    "MIRROR_ROOT": "The mirror root when --root is not given.",
    "MIRROR_PASSWORD": "The password for --username (never stored, never logged).",
    "MIRROR_STATE_DIR": "Where the writer keeps its live database (local disk; default "
                        "$XDG_STATE_HOME/mirror or ~/.local/state/mirror).",
    "ISIC_TOKEN": "ISIC API v2 access token (isic user print-token's access_token); held in "
                  "memory, sent only to the API, never stored or logged.",
    "MIRROR_SERVE_CONFIG": "Internal: how 'mirror serve --workers N' hands the root and the "
                           "token file's path (never the token) to its worker processes.",
    "TCIA_API_KEY": "TCIA REST API v3 (Bindaas) api_key; held in memory, sent only as the "
                    "api_key header to the v3 API, never stored or logged.",
    IDC_CATALOG_ENV: "IDC: a folder of idc-index-data Parquet files to sync from instead "
                     "of the installed package (--catalog overrides it).",
}

ALL = (REMOVAL_MAX_FRACTION, REMOVAL_MIN_COUNT, REMOVAL_MAX_COUNT, SIZE_SAMPLE_FILES,
       PUBLISH_EVERY_OBJECTS, PUBLISH_EVERY_SECONDS, PUBLISH_MIN_SECONDS, PROGRESS_INTERVAL,
       RECHECK_PERIOD, GC_REMOVED_GRACE_DAYS, MAX_DOCUMENT_DEPTH, MAX_DECODE_PIXELS,
       MAX_SUPERPIXEL_MAP_BYTES, ZIP_MEMORY_BYTES, DIRECT_DOWNLOADS)
