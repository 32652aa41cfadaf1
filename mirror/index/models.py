"""SQLAlchemy models of the metadata index.

The index is a *cache of the store*: every row can be rebuilt from the stored
JSON documents and blobs (``mirror reindex``). Timestamps that come from the
archive are kept as the exact strings it served (they sort correctly as text);
timestamps of our own are ISO-8601 UTC strings too, so SQLite and PostgreSQL
store identical values.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine


class Base(DeclarativeBase):
    pass


class ArchiveText(TypeDecorator):
    """Text the archive chose (names, field values, dates, ...): any length, any character.

    SQLite stores it as it is, whatever the declared length. PostgreSQL refuses a longer
    value in a ``VARCHAR(n)`` and any U+0000 in text, so there the column is ``TEXT``
    (migration 0004) and U+0000 is bound as U+FFFD: in the index only, as the stored
    document keeps the original. A criterion's values are bound the same way, so they still
    match. ``collate_c``: byte-order comparison on PostgreSQL, as SQLite and Python compare.
    """

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None, collate_c: bool = False):
        super().__init__()
        self.length, self.collate_c = length, collate_c

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine:
        # Not passed through dialect.type_descriptor: psycopg's adapts Text to a VARCHAR,
        # and DDL (and Alembic's comparison) would then say VARCHAR
        if dialect.name == "postgresql":
            return Text(collation="C") if self.collate_c else Text()
        return String(self.length) if self.length else Text()

    def bind_processor(self, dialect: Dialect):
        # Overridden, not process_bind_param: no Python call per value where none is needed
        return postgres_text if dialect.name == "postgresql" else None


def postgres_text(value: object) -> object:
    """``value`` as a PostgreSQL index holds it: text with U+FFFD for U+0000."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


class _Document:
    """Columns every archive document row shares."""

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    doc_sha256: Mapped[str] = mapped_column(String(64))
    doc: Mapped[dict] = mapped_column(JSON)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_at: Mapped[str | None] = mapped_column(String(40))
    synced_at: Mapped[str] = mapped_column(String(40))




class Blob(Base):
    """The current file of one role of one object (its older versions: ``file_versions``)."""

    __tablename__ = "blobs"
    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(ArchiveText(128))
    source_sha256: Mapped[str | None] = mapped_column(String(64))  # input of a derived blob
    fetched_at: Mapped[str] = mapped_column(String(40))


class ObjectRow(_Document, Base):
    """The current version of an object of a kind whose source declares no typed table
    (see :class:`mirror.sources.base.KindSpec`): one table serves every such kind."""

    __tablename__ = "objects"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(ArchiveText(256))
    parent_id: Mapped[str | None] = mapped_column(ArchiveText(128))


class FileVersion(Base):
    """Every version of every file ever stored: the archive may replace a file under the
    same object and role; the older one stays (pinned by snapshots) until ``mirror gc``."""

    __tablename__ = "file_versions"
    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    fetched_at: Mapped[str] = mapped_column(String(40))


class DocumentVersion(Base):
    """Every JSON version ever stored; old versions stay until ``mirror gc``."""

    __tablename__ = "document_versions"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    fetched_at: Mapped[str] = mapped_column(String(40))


class Listing(Base):
    """The last complete listing of one endpoint: a digest of what it showed (or of the
    document it was made for), its size and when, so a sync knows what it may skip and which
    listings are stalest (ISIC v1: ``segmentation:<image id>``, ``annotation:<study id>``)."""

    __tablename__ = "listings"
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    fetched_at: Mapped[str] = mapped_column(String(40))


class SyncItem(Base):
    """The persisted sync plan: one row per outstanding fetch, so a killed sync resumes."""

    __tablename__ = "sync_items"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(ArchiveText())


class SyncRun(Base):
    __tablename__ = "sync_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    command: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[str] = mapped_column(String(40))
    finished_at: Mapped[str | None] = mapped_column(String(40))
    ok: Mapped[bool | None] = mapped_column(Boolean)
    summary: Mapped[dict | None] = mapped_column(JSON)


class Meta(Base):
    """Key/value facts about this index (e.g. the generation it was published as)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


Index("ix_blobs_sha256", Blob.sha256)
Index("ix_objects_parent", ObjectRow.kind, ObjectRow.parent_id)
