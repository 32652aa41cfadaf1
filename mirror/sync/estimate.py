"""How many bytes a file plan needs, from what this archive's files actually weigh.

A rule of thumb per pixel is wrong by several times for any one archive (JPEG quality,
image content and mask sizes vary), and a wrong estimate refuses syncs that fit. So the
estimate uses, per file role and in this order: the archive's own size of the file
(``FileTask.size``); the bytes per pixel of files fetched at the start of this run (a
small sample of each role, which the run needs anyway); the mean size of the role's files
already in the index; and only when none is known, the role's rule of thumb. Derived files
(ISIC's ``spidx_*.npz``) are weighed with the file they come from. The basis is reported
with the figure, so a user can judge it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mirror import settings
from mirror.errors import MirrorError
from mirror.index import Blob
from mirror.sources.base import FileTask, SourceSpec

MARGIN = 1.10  # the disk must hold the estimate plus 10 %: it is an estimate


@dataclass
class Weight:
    """What files of one role were seen to weigh."""

    bytes: int = 0
    files: int = 0
    bytes_sampled: int = 0  # of the files whose pixels are known (fetched in this run)
    pixels: int = 0
    per_pixel_files: int = 0

    @property
    def per_pixel(self) -> float | None:
        return self.bytes_sampled / self.pixels if self.pixels else None


@dataclass
class Weights:
    """Per role: files in the index (mean per file) and sampled in this run (per pixel)."""

    indexed: dict[str, Weight] = field(default_factory=dict)
    sampled: dict[str, Weight] = field(default_factory=dict)

    @classmethod
    def from_index(cls, session: Session, spec: SourceSpec) -> Weights:
        """Sizes of the files the index holds, derived files counted with their source."""
        weights = cls()
        rows = session.execute(select(Blob.role, func.count(), func.sum(Blob.size))
                               .group_by(Blob.role)).all()
        counts = {role: (n, int(total or 0)) for role, n, total in rows}
        for role in spec.roles:
            if role.derived_from is not None or role.name not in counts:
                continue
            n, total = counts[role.name]
            for derived in spec.roles:
                if derived.derived_from == role.name and derived.name in counts:
                    total += counts[derived.name][1]
            weights.indexed[role.name] = Weight(bytes=total, files=n)
        return weights

    def weigh(self, task: FileTask, nbytes: int) -> None:
        """A file of ``task`` (and its derived files) arrived weighing ``nbytes``."""
        weight = self.sampled.setdefault(task.role, Weight())
        weight.files += 1
        weight.bytes += nbytes
        if task.pixels:
            weight.pixels += task.pixels
            weight.bytes_sampled += nbytes
            weight.per_pixel_files += 1


def sample_tasks(tasks: list[FileTask], weights: Weights) -> list[FileTask]:
    """The first few tasks of each role whose weight is not known yet: fetched first, so
    that the rest of the plan is estimated from them."""
    wanted = int(settings.SIZE_SAMPLE_FILES.get())
    picked: dict[str, int] = {}
    sample = []
    for task in tasks:
        if task.size or task.role in weights.indexed or picked.get(task.role, 0) >= wanted:
            continue
        picked[task.role] = picked.get(task.role, 0) + 1
        sample.append(task)
    return sample


def estimate_bytes(spec: SourceSpec, tasks: list[FileTask], weights: Weights | None = None
                   ) -> tuple[int, str]:
    """Bytes ``tasks`` will need, and the basis of the figure (one line)."""
    weights = weights or Weights()
    total = 0
    basis: dict[str, str] = {}
    for task in tasks:
        role = spec.role(task.role)
        sampled, indexed = weights.sampled.get(task.role), weights.indexed.get(task.role)
        if task.size:
            total += task.size
            basis.setdefault(task.role, "the archive's sizes")
        elif sampled and sampled.per_pixel and task.pixels:
            total += int(task.pixels * sampled.per_pixel)
            basis.setdefault(task.role, f"{sampled.per_pixel_files} fetched this run, "
                                        f"{sampled.per_pixel:.3f} B/pixel")
        elif sampled and sampled.files:
            total += sampled.bytes // sampled.files
            basis.setdefault(task.role, f"mean of {sampled.files} fetched this run")
        elif indexed and indexed.files:
            total += indexed.bytes // indexed.files
            basis.setdefault(task.role, f"mean of {indexed.files} in the index")
        else:
            total += int(task.pixels * role.bytes_per_pixel) + role.fixed_bytes
            basis.setdefault(task.role, "rule of thumb")
    return total, "; ".join(f"{role}: {text}" for role, text in sorted(basis.items()))


def check_disk_space(root, needed: int, enabled: bool = True) -> int:
    """Free bytes under ``root``; a clear error, saying by how much, when ``needed``
    (plus the margin) does not fit. ``enabled=False`` (``--no-space-check``) only reports."""
    free = shutil.disk_usage(root).free
    if enabled and needed * MARGIN > free:
        short = needed * MARGIN - free
        raise MirrorError(
            f"not enough disk space under {root}: the plan needs about {needed / 1e9:.2f} GB "
            f"(+10 %), {free / 1e9:.2f} GB are free, {short / 1e9:.2f} GB short; free space, "
            "narrow the sync with --blobs/--limit, or pass --no-space-check if the estimate "
            "is too high")
    return free
