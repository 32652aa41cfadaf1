"""Hostile mode: answers a broken proxy or a malicious archive could give.

Each case corrupts a deterministic tenth of the images (chosen by a hash of the seed, the
case and the isic_id), so the rest stays well-formed and a client can show it keeps the
good records while it rejects and reports the bad ones:

- ``huge``: the first page of an image listing carries a record with a 32 MiB attribution;
- ``endless``: listings never end: the last page's ``next`` leads back to itself;
- ``types``: wrong JSON types: ``files.full.size`` as a string, ``public`` as ``"true"``,
  ``metadata`` as a list, ``count`` as a string on first pages;
- ``ids``: unsafe ids (``../x``, ``ISIC_1\\n``, ``..\\\\..\\\\x``, NUL, an absolute path)
  and file URLs off the file host (``http://example.invalid/…``, ``file:///etc/passwd``).
"""

from __future__ import annotations

import copy
import hashlib

CASES = ("huge", "endless", "types", "ids")
PERIOD = 10
HUGE_BYTES = 32 << 20
UNSAFE_IDS = ("../x", "ISIC_1\n", "..\\..\\x", "ISIC_\x000000001", "/etc/passwd",
              "ISIC_0000001/../../escaped")
FOREIGN_URLS = ("http://example.invalid/images/ISIC_0000000.jpg", "file:///etc/passwd")


def parse_cases(spec: str | bool | None) -> frozenset[str]:
    """Case names from ``True``/``"all"``, a comma list, or nothing."""
    if spec is True or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return frozenset(CASES)
    if not spec:
        return frozenset()
    names = {p.strip() for p in str(spec).split(",") if p.strip()}
    unknown = sorted(names - set(CASES))
    if unknown:
        raise ValueError(f"unknown hostile case(s) {', '.join(unknown)}; cases are all, "
                         f"{', '.join(CASES)}")
    return frozenset(names)


class Hostile:
    def __init__(self, cases: frozenset[str], seed: int = 0):
        self.cases = cases
        self.seed = seed

    def victim(self, case: str, isic_id: str) -> int | None:
        """A variant number when ``isic_id`` is a victim of ``case``, else None."""
        if case not in self.cases:
            return None
        digest = hashlib.sha256(f"{self.seed}:{case}:{isic_id}".encode()).digest()
        if digest[0] % PERIOD:
            return None
        return digest[1]

    def record(self, record: dict) -> dict:
        isic_id = record["isic_id"]
        if (variant := self.victim("types", isic_id)) is not None:
            record = copy.deepcopy(record)
            kind = variant % 3
            if kind == 0:
                record["files"]["full"]["size"] = str(record["files"]["full"]["size"])
            elif kind == 1:
                record["public"] = "true"
            else:
                record["metadata"] = [record["metadata"]]
        if (variant := self.victim("ids", isic_id)) is not None:
            record = copy.deepcopy(record)
            if variant % 2:
                record["isic_id"] = UNSAFE_IDS[variant // 2 % len(UNSAFE_IDS)]
            else:
                record["files"]["full"]["url"] = FOREIGN_URLS[variant // 2 % len(FOREIGN_URLS)]
        return record

    def page(self, request, page: dict) -> dict:
        first = request.get("cursor") in (None, "")
        if "huge" in self.cases and first and page["results"]:
            record = {**page["results"][0], "attribution": "A" * HUGE_BYTES}
            page = {**page, "results": [record, *page["results"][1:]]}
        if "types" in self.cases and first:
            page = {**page, "count": str(page["count"])}
        if "endless" in self.cases and page["next"] is None:
            page = {**page, "next": f"http://{request.host}{request.raw_path}"}
        return page
