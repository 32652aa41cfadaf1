"""Where the index lives: a writer's working database and published read-only generations.

SQLite's WAL mode does not work on network filesystems, and a lab's mirror often sits
on a NAS. So the writer never writes a database inside the mirror root. It works on
``work.sqlite`` in its *local* state folder and, when a run ends, publishes a copy
into the mirror::

    <ns>/index/index-000042.sqlite   immutable once published
    <ns>/index/CURRENT               "index-000042.sqlite", replaced atomically

Readers open the generation CURRENT names with ``mode=ro&immutable=1``: no locks, no
journal files, so any number of readers on any number of machines, and read-only
mounts, work. The newest few generations are kept for readers that still hold one.

With ``index_url`` set (e.g. ``postgresql://...``) the writer and the readers share
that database instead, and there are no generations.

Either way each publish also writes the Parquet projections selections read
(:mod:`mirror.projection`): ``index/projection-000042/`` beside generation 42, made before
CURRENT names it; on PostgreSQL ``index/PROJECTION`` names the newest one.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from mirror import projection
from mirror.errors import DamagedStateError, IndexFenceError, MirrorError
from mirror.index.models import Meta
from mirror.layout import Layout, shared_mkdir
from mirror.store import fsync_dir
from mirror.temps import owned_temp

KEEP_GENERATIONS = 3
READER_POOL_SIZE = 8  # idle connections a reader keeps; more are opened when busy
log = logging.getLogger("mirror.index")


def current_generation(layout: Layout) -> int | None:
    """The generation number CURRENT names, or None before the first publish."""
    try:
        name = layout.current.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedStateError(f"cannot read {layout.current} ({exc}); rebuild the index with "
                                "'mirror reindex'") from None
    number = name.removeprefix("index-").removesuffix(".sqlite")
    if not number.isdigit():
        raise DamagedStateError(f"{layout.current} is damaged (it names {name[:40]!r}, not an "
                                "index generation); rebuild the index with 'mirror reindex'")
    return int(number)


HEAD_REVISION = "0007"
"""The newest Alembic revision in ``migrations/versions`` (``tests/test_migrations.py``
holds it equal to Alembic's own head): an index already there, or a new one, needs no
Alembic at all, whose import and migration context cost about 0.2 s of every command."""


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (a no-op when it is there).

    An empty database (a new mirror, a reindex) gets the models' schema in one
    ``create_all`` and is stamped at head: replaying every revision cost about a second per
    new index, and ``tests/test_migrations.py`` holds the migrated schema equal to the
    models, so both paths give the same tables. A database with tables is migrated, by
    Alembic, only when its recorded revision is not :data:`HEAD_REVISION`."""
    from sqlalchemy import inspect

    names = inspect(engine).get_table_names()
    if not names:
        from mirror.index.models import Base
        from mirror.sources.base import load_all

        load_all()  # every source's typed tables join Base.metadata
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            _stamp(conn, HEAD_REVISION)
        return
    if "alembic_version" in names and _revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("mirror.migrations")))
    config.attributes["connection_engine"] = engine
    command.upgrade(config, "head")


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return rows[0][0] if len(rows) == 1 else None


def _stamp(conn, revision: str) -> None:
    """What ``alembic stamp`` writes: the one-row ``alembic_version`` table."""
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS alembic_version (version_num "
                         "VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY "
                         "(version_num))")
    conn.exec_driver_sql("DELETE FROM alembic_version")
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": revision})


WRITER_CACHE_KIB = 65_536  # the working database's page cache (64 MiB)


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", pool_size=1, max_overflow=0)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # The writer's page cache (SQLite's default is 2 MB): a bulk load of a million rows
        # with random keys (IDC's catalog) otherwise re-reads B-tree pages from the OS for
        # nearly every insert. Pages, not rows: it is a ceiling, not an allocation.
        cursor.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        cursor.close()

    return engine


def nothing_published(layout: Layout, error: type[MirrorError] = MirrorError) -> MirrorError:
    """The error of a reader that finds no generation: while a first sync runs (it holds
    the lease) the wait, not 'run sync', which that lease would refuse."""
    from mirror.lease import lease_holder

    holder = lease_holder(layout)
    if holder is not None:
        return error(
            f"no index published yet under {layout.root}: its first sync (pid "
            f"{holder.get('pid')} on {holder.get('host')}) publishes one every few minutes "
            "(MIRROR_PUBLISH_EVERY_SECONDS); try again shortly")
    return error(f"no index published yet under {layout.root}; "
                 "run 'mirror sync' or 'mirror reindex'")


def open_reader(layout: Layout, url: str | None = None, generation: int | None = None
                ) -> Engine:
    """A read-only engine on ``generation`` (default: the current one), or on ``url``.

    On PostgreSQL each reader transaction is one snapshot (REPEATABLE READ), as a
    generation file is for SQLite readers."""
    if url:
        return create_engine(url, isolation_level="REPEATABLE READ")
    generation = generation or current_generation(layout)
    if generation is None:
        raise nothing_published(layout)
    path = layout.generation_path(generation).resolve()

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                               check_same_thread=False)

    # Not SQLite's default SingletonThreadPool (one connection per thread, and past five
    # threads it closes other threads' connections under them): a server's request
    # threads share a queue of connections to the immutable file instead.
    return create_engine("sqlite://", creator=connect, poolclass=QueuePool,
                         pool_size=READER_POOL_SIZE, max_overflow=-1)


class IndexWriter:
    """The single writer's view of the index: a local working database plus publishing."""

    def __init__(self, layout: Layout, url: str | None = None, mirror_id: str = "",
                 spec=None, rebuild: bool = False):
        """``spec``: the source whose kinds the projections hold (default: the one the
        root's ``mirror.json`` names; without either, a publish writes no tables).
        ``rebuild``: the caller replaces every row (reindex), so a damaged CURRENT is
        no obstacle: the new generation follows the newest one on disk."""
        self.layout = layout
        self.url = url
        self.spec = spec
        try:
            self.started_from = current_generation(layout)
        except DamagedStateError:
            if not rebuild:
                raise
            self.started_from = _newest_on_disk(layout)
            if self.started_from is None:
                layout.current.unlink()
            else:
                _write_current(layout.index_dir,
                               layout.generation_path(self.started_from).name)
        self.rebuild = rebuild
        if url:
            self.engine = create_engine(url)
        else:
            self.path = layout.state_dir() / "work.sqlite"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prepare_work_db(mirror_id)
            self.engine = _sqlite_engine(self.path)
        upgrade_to_head(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if mirror_id:
            with self.session() as session:
                session.merge(Meta(key="mirror_id", value=mirror_id))

    def _prepare_work_db(self, mirror_id: str) -> None:
        """Keep the working database only if it belongs to this mirror at this generation.

        It is kept after a crash (same generation: its unpublished rows are the resume
        point). It is replaced by a copy of the current generation when another writer
        published since, and dropped when it belongs to another mirror (one that was
        deleted and made anew at the same path, say), so that no stale row survives.
        """
        if not self.path.exists():
            local_generation, local_id = None, None
        else:
            local_generation, local_id = self._local_meta()
            if local_generation is None and not self._readable():
                log.warning("%s is damaged; starting again from the published index",
                            self.path)
                local_id = "damaged"  # never kept: it is rebuilt from the generation
        other_mirror = bool(local_id == "damaged"
                            or (mirror_id and local_id and local_id != mirror_id))
        if (self.path.exists() and local_generation == self.started_from and not other_mirror
                and not self.rebuild):
            return
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        if self.started_from is None or self.rebuild:
            return  # a rebuild starts from an empty schema (and never reads a damaged copy)
        published = self.layout.generation_path(self.started_from)
        source = sqlite3.connect(f"file:{published}?mode=ro&immutable=1", uri=True)
        target = sqlite3.connect(self.path)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()

    def _readable(self) -> bool:
        """True when the working database is an SQLite file whose schema can be read."""
        try:
            conn = sqlite3.connect(self.path)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
                return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            finally:
                conn.close()
        except sqlite3.Error:
            return False

    def _local_meta(self) -> tuple[int | None, str | None]:
        """(generation, mirror id) recorded in the working database."""
        conn = sqlite3.connect(self.path)
        try:
            rows = dict(conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('generation', 'mirror_id')"))
        except sqlite3.Error:
            return None, None
        finally:
            conn.close()
        generation = rows.get("generation")
        return (int(generation) if generation else None), rows.get("mirror_id")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def publish(self) -> int:
        """Publish the working database as the next read-only generation, with its
        projections; returns its number (0 on PostgreSQL, where the database itself is what
        readers see and only the projections are published)."""
        index_dir = self.layout.index_dir
        shared_mkdir(index_dir, self.layout.root)
        if self.url:
            previous = projection.current_number(index_dir)
            number = (previous or 0) + 1
            projection.place(self._stage_projection(previous), index_dir, number)
            projection.write_pointer(index_dir, number)
            projection.prune(index_dir, number - KEEP_GENERATIONS + 1)
            return 0
        self._fence()
        number = (self.started_from or 0) + 1
        with self.session() as session:
            session.merge(Meta(key="generation", value=str(number)))
        shared_mkdir(index_dir, self.layout.root)
        staged = self._stage_projection(self.started_from)
        tmp = owned_temp(index_dir / f"index-{number:06d}.sqlite")  # see mirror/temps.py
        try:
            self._vacuum_into(tmp)
            final = self.layout.generation_path(number)
            try:
                os.link(tmp, final)  # never overwrites another writer's generation
            except FileExistsError:
                raise IndexFenceError(f"index generation {number} already exists: another "
                                      "writer got there first; run the command again") from None
            fsync_dir(index_dir)
            projection.place(staged, index_dir, number)
            self._fence()
            _write_current(index_dir, final.name)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(staged, ignore_errors=True)
        self.started_from = number
        self._prune(number)
        return number

    def _stage_projection(self, previous: int | None) -> Path:
        """The projections of the working database, built under a temporary name (the
        tables that did not change since projection ``previous`` linked from it)."""
        spec = self.spec
        if spec is None and self.layout.marker.exists():  # the mirror's own source
            from mirror.config import load_config
            from mirror.sources.base import spec_of

            spec = spec_of(load_config(self.layout.root).source)
        with self.engine.connect() as conn:
            tables, links, digests = projection.index_tables(conn, spec)
            return projection.stage(self.layout.index_dir, tables, links, digests, previous)

    def _vacuum_into(self, tmp: Path) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(FULL)")
            conn.exec_driver_sql("VACUUM INTO ?", (str(tmp),))
        copy = sqlite3.connect(tmp)
        try:
            copy.execute("PRAGMA journal_mode=DELETE")  # immutable readers need no WAL
        finally:
            copy.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o444)

    def _fence(self) -> None:
        """Refuse to publish over a generation another writer made meanwhile."""
        now = current_generation(self.layout)
        if now != self.started_from:
            raise IndexFenceError(
                f"another writer published index generation {now} while this one worked "
                f"(started from {self.started_from}); nothing was published. Run the command "
                "again.")

    def _prune(self, newest: int) -> None:
        for path in sorted(self.layout.index_dir.glob("index-*.sqlite")):
            number = int(path.stem.removeprefix("index-"))
            if number <= newest - KEEP_GENERATIONS:
                path.unlink(missing_ok=True)
        projection.prune(self.layout.index_dir, newest - KEEP_GENERATIONS + 1)

    def close(self) -> None:
        self.engine.dispose()


def _newest_on_disk(layout: Layout) -> int | None:
    numbers = [int(p.stem.removeprefix("index-")) for p in layout.index_dir.glob("index-*.sqlite")
               if p.stem.removeprefix("index-").isdigit()]
    return max(numbers, default=None)


def _write_current(index_dir: Path, name: str) -> None:
    tmp = owned_temp(index_dir / "CURRENT")
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, index_dir / "CURRENT")
    fsync_dir(index_dir)
