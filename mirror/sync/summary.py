"""What a sync run did, for people (``summary_lines``) and for machines (``as_dict``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mirror.errors import DiskFullError


@dataclass
class Failure:
    kind: str
    object_id: str
    role: str
    error: str


@dataclass
class SyncSummary:
    """Counts per kind and outcome, bytes, failures and timing of one run."""

    objects: Counter = field(default_factory=Counter)  # (kind, outcome) -> n
    blobs: Counter = field(default_factory=Counter)  # (role, outcome) -> n
    bytes_downloaded: int = 0
    requests: int = 0
    retries: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    generation: int | None = None
    plan: dict = field(default_factory=dict)
    dry_run: bool = False
    files_kept: int = 0  # files of the plan published so far (an interrupted run keeps them)

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        if n:
            self.objects[(kind, outcome)] += n

    def fail(self, kind: str, object_id: str, role: str, error: object) -> None:
        """Record one item's failure; a full disk instead stops the whole run."""
        if isinstance(error, DiskFullError):
            raise error  # it would fail every item alike: one clear error, not hundreds
        self.failures.append(Failure(kind, object_id, role, _one_line(error)))

    def as_dict(self) -> dict:
        objects: dict[str, dict[str, int]] = {}
        for (kind, outcome), n in sorted(self.objects.items()):
            objects.setdefault(kind, {})[outcome] = n
        blobs: dict[str, dict[str, int]] = {}
        for (role, outcome), n in sorted(self.blobs.items()):
            blobs.setdefault(role, {})[outcome] = n
        return {
            "ok": self.ok, "dry_run": self.dry_run, "requests": self.requests,
            "retries": self.retries, "objects": objects, "blobs": blobs,
            "bytes": self.bytes_downloaded, "seconds": round(self.seconds, 3),
            "generation": self.generation, "plan": self.plan,
            "failures": [vars(f) for f in self.failures],
        }

    def summary_lines(self) -> list[str]:
        lines = []
        data = self.as_dict()
        for label, table in (("", data["objects"]), (" files", data["blobs"])):
            for kind, outcomes in table.items():
                counts = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
                lines.append(f"{kind + label:18} {counts}")
        lines.append(f"{self.requests} requests ({self.retries} retried), "
                     f"{self.bytes_downloaded / 1e6:.1f} MB in {self.seconds:.1f} s")
        if self.dry_run:
            lines.append("dry run: nothing was kept; the next sync reports these changes "
                         "again and fetches the plan")
        if self.failures:
            lines.append(f"{len(self.failures)} item(s) NOT mirrored; run 'mirror sync' again:")
            lines += [f"  {f.kind} {f.object_id} {f.role}: {f.error}" for f in self.failures[:20]]
            if len(self.failures) > 20:
                lines.append(f"  ... and {len(self.failures) - 20} more (see --json)")
        return lines


def _one_line(error: object) -> str:
    return " ".join(str(error).split())[:300]
