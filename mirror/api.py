"""The offline Python API: open a mirror and read its objects, files and selections.

    >>> from mirror import Mirror
    >>> m = Mirror("~/isic")                  # read-only, offline
    >>> m.source.title                        # 'ISIC Archive API v1'
    >>> doc = m.document("image", "ISIC_0000000")   # any kind, by id or name
    >>> img = m.image("ISIC_0000000")         # the source's own objects (ISIC v1 below)
    >>> img.meta["clinical"]["diagnosis"]
    >>> img.data.shape                        # (H, W, 3) uint8, loaded on demand
    >>> sp = img.superpixels                  # {"idx", "map", "max", "shp"}, from spidx_<id>.npz
    >>> study = m.study("ISIC Annotation Study - All Features")
    >>> values = study.annotations[0].markups # {feature: per-superpixel values}

``Mirror`` itself knows no archive: what it offers beyond documents and files comes from
the mirror's source (its ``objects`` accessor class, e.g.
the ISIC v1 source's ``IsicV1Objects``), reached as attributes of the
mirror. Nothing here touches the network; ``m.sync(...)`` is the one exception, on request.
Everything is read from the published index generation and the object store.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mirror import query
from mirror.config import layout_for, load_config
from mirror.errors import MissingObjectError
from mirror.index import Blob
from mirror.index.database import current_generation, open_reader
from mirror.ingest import model_of
from mirror.projection import current_number
from mirror.sources.base import SourceSpec, source_class
from mirror.store import ObjectStore


class Mirror:
    """A mirror opened read-only. ``root`` defaults to ``$MIRROR_ROOT``."""

    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("MIRROR_ROOT")
        if not root:
            raise MissingObjectError("no mirror root given; pass Mirror(root) or set MIRROR_ROOT")
        self.root = Path(root).expanduser()
        self.config = load_config(self.root)
        self.source: SourceSpec = source_class(self.config.source).spec
        self.layout = layout_for(self.root, self.config)
        self.store = ObjectStore(self.layout)
        self._projection: query.Projection | None = None
        self._open()
        self._objects = _objects_of(self)

    def _open(self) -> None:
        """The index and the number of its projection: the generation's own, or (PostgreSQL)
        the newest the writer published."""
        url = self.config.index_url
        generation = None if url else current_generation(self.layout)
        self._engine = open_reader(self.layout, url, generation)
        self._projection_number = current_number(self.layout.index_dir) if url else generation

    @property
    def projection(self) -> query.Projection:
        """The Parquet projection of the index this mirror was opened on (opened once)."""
        if self._projection is None:
            self._projection = query.open_projection(self.layout.index_dir,
                                                     self._projection_number, self.source)
        return self._projection

    def __repr__(self) -> str:
        return f"Mirror({str(self.root)!r})"

    def __getattr__(self, name: str) -> Any:
        # The source's accessors (m.image, m.select_images, ...). Only reached for names
        # Mirror itself lacks; _objects is set in __init__, so no recursion.
        if name.startswith("__") or name == "_objects" or "_objects" not in self.__dict__:
            raise AttributeError(name)
        try:
            return getattr(self._objects, name)
        except AttributeError:
            raise AttributeError(f"a {self.source.title} mirror has no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        objects = self.__dict__.get("_objects")
        if objects is not None and name in getattr(objects, "__dict__", {}):
            setattr(objects, name, value)  # e.g. m.image_selection = None
        else:
            super().__setattr__(name, value)

    def close(self) -> None:
        self._engine.dispose()
        if self._projection is not None:
            self._projection.close()
            self._projection = None

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self, url: str | None = None, **options: Any):
        """Run the sync engine (the only call that uses the network), then reopen the index."""
        from mirror.sync import SyncOptions, sync

        summary = sync(self.root, url, SyncOptions(**options))
        self.close()
        self._open()
        return summary

    # -- any source ------------------------------------------------------------------------

    def document(self, kind: str, key: str) -> dict:
        """The current document of the ``kind`` object with id or name ``key``."""
        spec = self.source.kind(kind)
        model, where = model_of(spec)
        row = self._one(select(model.doc).where(
            (model.id == key) | (model.name == key), *where).limit(1))
        if row is None:
            raise MissingObjectError(
                f"no {kind} {key!r} in the mirror at {self.root}; check the name, or run "
                f"'mirror sync --root {self.root}' to fetch it")
        return row[0]

    def ids(self, kind: str, include_removed: bool = False) -> list[str]:
        """Ids of every ``kind`` object in the mirror, sorted."""
        model, where = model_of(self.source.kind(kind))
        statement = select(model.id).where(*where).order_by(model.id)
        if not include_removed:
            statement = statement.where(model.removed.is_(False))
        return [r[0] for r in self._all(statement)]

    def select(self, kind: str, criteria: Any = None, limit: int | None = None,
               strict: bool = False) -> list[str]:
        """The sorted ids of the current objects of ``kind`` (a table name: ``images``,
        ``series``...) whose documents meet ``criteria`` (see :mod:`mirror.query`). A
        criterion that can never match is a ``CriterionWarning`` (``strict``: an error)."""
        return query.select_ids(self.projection, criteria, limit=limit, kind=kind,
                                strict=strict)

    def sql(self, statement: str) -> tuple[list[str], list[tuple]]:
        """The header and rows of one read-only SQL statement over the projection's tables
        (one per kind: ``images``, ``segmentations``, ...; see ``mirror sql``)."""
        return query.run_sql(self.projection, statement)

    def file(self, object_id: str, role: str) -> Path:
        """The current file of ``role`` of an object (e.g. ``"image"``, ``"mask"``)."""
        return self._blob(object_id, role, f"{role} file")

    # -- helpers the source's accessors share ------------------------------------------------

    def _one(self, statement):
        with self._engine.connect() as conn:
            return conn.execute(statement).first()

    def _all(self, statement) -> list:
        with self._engine.connect() as conn:
            return conn.execute(statement).all()

    def _rows(self, statement) -> list:
        """ORM objects (detached, fully loaded) for a ``select(Model)``."""
        with Session(self._engine) as session:
            return list(session.scalars(statement))

    def _find(self, model, key: str, what: str):
        """The row of ``model`` whose id or name is ``key``, or a clear error."""
        rows = self._rows(select(model).where((model.id == key) | (model.name == key)).limit(1))
        if not rows:
            raise MissingObjectError(
                f"no {what} {key!r} in the mirror at {self.root}; check the name, or run "
                f"'mirror sync --root {self.root}' to fetch it")
        return rows[0]

    def _blob_relpath(self, object_id: str, role: str) -> str | None:
        row = self._one(select(Blob.path).where(Blob.object_id == object_id, Blob.role == role))
        return None if row is None else row[0]

    def _blob(self, object_id: str, role: str, what: str) -> Path:
        relpath = self._blob_relpath(object_id, role)
        if relpath is None:
            raise MissingObjectError(
                f"the {what} of {object_id} is not mirrored; run 'mirror sync --root "
                f"{self.root}' with --blobs including {self._option_of(role)}")
        return self.store.path(relpath)

    def _option_of(self, role: str) -> str:
        """The ``--blobs`` choice that fetches files of ``role`` (a derived file's: the
        choice of the file it is made from)."""
        try:
            found = self.source.role(role)
            if found.option is None and found.derived_from:
                found = self.source.role(found.derived_from)
        except Exception:  # noqa: BLE001 - an unknown role: say it plainly
            return "it"
        return found.option or "it"

    def _blob_json(self, object_id: str, role: str) -> dict | None:
        relpath = self._blob_relpath(object_id, role)
        return None if relpath is None else self.store.read_json(relpath)


def _objects_of(mirror: Mirror) -> object | None:
    """The source's accessor object for ``mirror``, when the source declares one."""
    path = getattr(source_class(mirror.config.source), "objects", None)
    if path is None:
        return None
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)(mirror)
