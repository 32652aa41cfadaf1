"""The TCIA accessors of :class:`mirror.api.Mirror`: selecting series offline.

``m.select_series(criteria)`` (also ``m.select_images``, the name the CLI's selection
commands call, e.g. ``mirror export files``) selects series by the fields of their
``getSeries`` rows (``Modality``, ``BodyPartExamined``, ``Collection``, ``LicenseName``...),
with the mirror's criteria language over the ``series`` projection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mirror import query
from mirror.errors import QueryError

if TYPE_CHECKING:
    from mirror.api import Mirror


@dataclass
class SeriesSelection:
    """The series a selection found (``ids``: their SeriesInstanceUIDs, sorted)."""

    criteria: list
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)


class TciaObjects:
    def __init__(self, mirror: Mirror):
        self.mirror = mirror

    def select_series(self, criteria: Any = None, limit: int | None = None,
                      strict: bool = False) -> SeriesSelection:
        """Current series whose rows meet ``criteria`` (``[field, op, value]``, a list of
        them, or ``'FIELD OP VALUE'`` strings); ``strict``: a criterion that can never
        match is an error, not a warning."""
        items = query.criteria(criteria)
        ids = query.select_ids(self.mirror.projection, items, limit=limit, kind="series",
                               strict=strict)
        return SeriesSelection(items, ids)

    def select_images(self, criteria: Any = None, dataset: str | None = None,
                      study: str | None = None, limit: int | None = None,
                      strict: bool = False) -> SeriesSelection:
        """:meth:`select_series`; ``dataset`` and ``study`` are ISIC's scopes."""
        if dataset or study:
            raise QueryError("--dataset and --study are ISIC scopes; select TCIA series with "
                             "--where, e.g. --where 'StudyInstanceUID == 1.2.3'")
        return self.select_series(criteria, limit, strict)
