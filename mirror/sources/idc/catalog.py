"""The IDC catalog: idc-index-data's Parquet tables, read with DuckDB, streamed as Arrow.

IDC publishes its whole series-level catalog as a pip package (``idc-index-data``, one
``idc_index.parquet`` row per DICOM series, 1,044,191 rows in v25), so choosing what to
mirror costs no request at all. This module opens that catalog (or a directory holding the
same file names: an older wheel's files, a sandbox's), records its version for the mirror,
selects series by a scope, and diffs two catalog snapshots.

A *scope* is either the mirror's criteria, ``FIELD OP VALUE`` joined by ``AND`` over
``idc_index`` columns (``collection_id == rider_pilot AND Modality == CT``), compiled to a
parameterised statement whose identifiers come only from the catalog's own column list; or
one user ``SELECT`` returning ``SeriesInstanceUID`` (``SELECT SeriesInstanceUID FROM
idc_index WHERE ...``), run in a DuckDB connection that can read nothing but the catalog's
files (external access off, configuration locked) after checking that it is a single SELECT.

Rows are streamed as Arrow record batches, never materialised: a read of every series
with all 31 columns takes about 4 s and stays under 300 MB RSS (measured on v25; see the
report in ``tests/sources/idc/test_catalog.py::test_full_catalog_stream``).

Diffs compare two ``idc_index`` tables by ``SeriesInstanceUID`` (IDC's ``prior_versions_index``
is no change log: every row in it has ended by construction, and a row can end because the
same content moved bucket; research note ``tcia_idc_changes.md`` C10, §2.4).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mirror.errors import CatalogError, ScopeError
from mirror.query import Criterion, QueryError, parse_where, split_and

PACKAGE = "idc-index-data"
TABLES = ("idc_index", "prior_versions_index", "collections_index", "version_metadata_index")
REQUIRED = ("idc_index",)  # the others are optional: older wheels lack version_metadata_index
VERSION_KEY = b"idc_index_data_version"  # Parquet key-value metadata, from 24.2.1 on
# The fields whose change between two catalogs matters to a mirror (changes note C11).
DIFF_FIELDS = ("crdc_series_uuid", "aws_bucket", "license_short_name", "collection_id",
               "source_DOI")
METADATA_FIELDS = ("license_short_name", "collection_id", "source_DOI")
VERSION_COLUMNS = ("series_init_idc_version", "series_revised_idc_version")  # 24.1.0 on
KINDS = ("new", "revised", "moved", "metadata", "removed")

BATCH_ROWS = 8192
"""Rows per streamed Arrow batch: big enough to amortise Python, small enough for RSS."""
DUCKDB_THREADS = 2
"""DuckDB worker threads per catalog connection (the machines here have two cores)."""
DUCKDB_MEMORY_LIMIT = "512MB"
"""DuckDB's memory cap per connection; a full-catalog diff needs about 300 MB."""

_SQL_START = re.compile(r"^\s*\(*\s*(select|with|from|values|table|explain|describe|show|"
                        r"summarize|pragma|copy|attach|detach|install|load|create|drop|"
                        r"alter|insert|update|delete|set|reset|call|export|import|use|"
                        r"begin|commit|rollback|checkpoint|vacuum|prepare|execute)\b",
                        re.IGNORECASE)
_NUMERIC = ("BIGINT", "INTEGER", "DOUBLE", "FLOAT", "DECIMAL", "HUGEINT", "SMALLINT",
            "TINYINT", "UBIGINT", "UINTEGER", "REAL")


# -- versions and opening ------------------------------------------------------------------

@dataclass(frozen=True)
class CatalogVersion:
    """Which catalog a mirror was built from: recorded with every sync."""

    package: str  # the idc-index-data version, e.g. "25.0.5"
    build: str | None = None  # the Parquet's own stamp, e.g. "25.0.5-0-gf08b112"

    @property
    def release(self) -> int:
        """The IDC data release (the package's major version): 25 for 25.0.5."""
        return int(self.package.split(".")[0])

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "build": self.build, "release": self.release}


@dataclass(frozen=True)
class Catalog:
    """One catalog snapshot: the Parquet file of each table and the snapshot's version."""

    paths: dict[str, Path]
    version: CatalogVersion

    @classmethod
    def installed(cls) -> Catalog:
        """The catalog of the installed ``idc-index-data`` package."""
        try:
            package = package_version(PACKAGE)
            import idc_index_data
        except (PackageNotFoundError, ImportError):
            raise CatalogError(f"the {PACKAGE} package is not installed; install it with "
                               f"'pip install {PACKAGE}'") from None
        metadata = getattr(idc_index_data, "INDEX_METADATA", {})  # 24.2 on
        paths = {}
        for name in TABLES:
            path = metadata.get(name, {}).get("parquet_filepath") or getattr(
                idc_index_data, f"{name.upper()}_PARQUET_FILEPATH", None)  # older wheels
            if path is not None:
                paths[name] = Path(path)
        return cls._checked(paths, package, f"the installed {PACKAGE} {package}")

    @classmethod
    def from_dir(cls, folder: str | Path, package: str | None = None) -> Catalog:
        """A catalog from a folder of ``<table>.parquet`` files (an older wheel, a sandbox).

        The version comes from the Parquet stamp when the files carry one (24.2.1 on);
        older files need ``package`` given.
        """
        folder = Path(folder)
        paths = {n: folder / f"{n}.parquet" for n in TABLES if (folder / f"{n}.parquet").is_file()}
        if "idc_index" in paths and package is None:
            build = _build_stamp(paths["idc_index"])
            package = build.split("-")[0] if build else None
        if package is None and "idc_index" in paths:
            raise CatalogError(f"{folder}/idc_index.parquet carries no {VERSION_KEY.decode()} "
                               "stamp; pass the idc-index-data version it came from")
        return cls._checked(paths, package or "0", str(folder))

    @classmethod
    def _checked(cls, paths: dict[str, Path], package: str, where: str) -> Catalog:
        for name in REQUIRED:
            if name not in paths or not paths[name].is_file():
                raise CatalogError(f"{where} has no {name}.parquet; reinstall {PACKAGE} or "
                                   "point at a folder holding the catalog's Parquet files")
        if not re.fullmatch(r"\d+(\.\d+)*", package.split("+")[0].split("-")[0]):
            raise CatalogError(f"{where}: {package!r} is not an idc-index-data version "
                               "(expected e.g. 25.0.5)")
        return cls(paths, CatalogVersion(package, _build_stamp(paths["idc_index"])))

    # -- schema --------------------------------------------------------------------------

    def columns(self, table: str = "idc_index") -> dict[str, str]:
        """Column name -> DuckDB type name, in the file's order."""
        with closing(duckdb.connect(":memory:")) as conn:
            try:
                rows = conn.execute("DESCRIBE SELECT * FROM read_parquet(?)",
                                    [str(self.paths[table])]).fetchall()
            except duckdb.Error as exc:
                raise CatalogError(f"cannot read {self.paths[table]}: {_first_line(exc)}; "
                                   f"reinstall {PACKAGE} or replace the file") from None
        return {row[0]: row[1] for row in rows}

    def has_columns(self, *names: str) -> bool:
        return set(names) <= set(self.columns())

    # -- connections ---------------------------------------------------------------------

    @contextmanager
    def connect(self, alias: str = "") -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection that can read this catalog's tables and nothing else."""
        with read_only_connection([(self, alias)]) as conn:
            yield conn

    # -- selection -----------------------------------------------------------------------

    def select(self, scope: Scope | str | None = None, columns: Sequence[str] | None = None,
               batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream the ``idc_index`` rows in ``scope`` as Arrow record batches."""
        scope = as_scope(scope)
        known = self.columns()
        cols = [resolve_column(c, known) for c in (columns or list(known))]
        with self.connect() as conn:
            rel = self._relation(conn, scope, cols, known)
            try:
                reader = rel.to_arrow_reader(batch_rows)
                yield from reader
            except duckdb.Error as exc:
                raise ScopeError(f"scope {scope} failed: {_first_line(exc)}") from None

    def rows(self, scope: Scope | str | None = None,
             columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """The rows in ``scope`` as dicts, one batch of Python objects at a time."""
        for batch in self.select(scope, columns):
            yield from batch.to_pylist()

    def count(self, scope: Scope | str | None = None) -> int:
        scope = as_scope(scope)
        known = self.columns()
        with self.connect() as conn:
            rel = self._relation(conn, scope, ["SeriesInstanceUID"], known)
            try:
                return rel.aggregate("count(*)").fetchall()[0][0]
            except duckdb.Error as exc:
                raise ScopeError(f"scope {scope} failed: {_first_line(exc)}") from None

    def _relation(self, conn: duckdb.DuckDBPyConnection, scope: Scope, cols: list[str],
                  known: dict[str, str]) -> duckdb.DuckDBPyRelation:
        listed = ", ".join(quote(c) for c in cols)
        if scope.sql is not None:
            user = user_relation(conn, scope.sql)
            user.create_view("user_scope", replace=True)
            sql = (f"SELECT {listed} FROM idc_index WHERE SeriesInstanceUID IN "
                   "(SELECT SeriesInstanceUID FROM user_scope)")
            return conn.sql(sql)
        where, params = compile_criteria(scope.criteria, known)
        return conn.sql(f"SELECT {listed} FROM idc_index WHERE {where}", params=params)

    def collections(self) -> list[dict[str, Any]]:
        """Each collection's id, series, instances and bytes (from ``idc_index``)."""
        with self.connect() as conn:
            rel = conn.sql(
                "SELECT collection_id, count(*) AS series, sum(instanceCount)::BIGINT AS "
                "instances, sum(series_size_MB) AS size_MB, list(DISTINCT aws_bucket ORDER "
                "BY aws_bucket) AS buckets FROM idc_index GROUP BY collection_id "
                "ORDER BY instances, collection_id")
            return rel.to_arrow_table().to_pylist()

    def release_dates(self) -> dict[int, str]:
        """IDC release number -> date, from ``version_metadata_index`` (24.2 on)."""
        if "version_metadata_index" not in self.paths:
            return {}
        with self.connect() as conn:
            return dict(conn.sql("SELECT idc_version, version_timestamp FROM "
                                 "version_metadata_index ORDER BY 1").fetchall())


def _build_stamp(path: Path) -> str | None:
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"cannot read {path}: {_first_line(exc)}; reinstall {PACKAGE} or "
                           "replace the file") from None
    stamp = meta.get(VERSION_KEY)
    return stamp.decode("utf-8", "replace") if stamp else None


@contextmanager
def read_only_connection(
        catalogs: Sequence[tuple[Catalog, str]]) -> Iterator[duckdb.DuckDBPyConnection]:
    """One DuckDB connection with views ``<alias><table>`` over each catalog's files.

    After the views exist, the connection may touch only those files: external access is
    off (no other file, no network, no extension install), the allowed paths are exactly the
    catalog files, and the configuration is locked so no statement can undo that.
    """
    conn = duckdb.connect(":memory:", config={
        "threads": DUCKDB_THREADS, "memory_limit": DUCKDB_MEMORY_LIMIT,
        "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        conn.execute("SET enable_progress_bar = false")  # a session option, not a global one
        allowed = []
        for catalog, alias in catalogs:
            for table, path in catalog.paths.items():
                conn.execute(f"CREATE VIEW {quote(alias + table)} AS SELECT * FROM "
                             f"read_parquet({_literal(str(path))})")
                allowed.append(str(path))
            if not alias:  # idc-index's own name for the main table
                conn.execute('CREATE VIEW "index" AS SELECT * FROM idc_index')
        conn.execute(f"SET allowed_paths = [{', '.join(_literal(p) for p in allowed)}]")
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
        yield conn
    finally:
        conn.close()


def quote(identifier: str) -> str:
    """A DuckDB quoted identifier (``"`` doubled inside)."""
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- scopes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scope:
    """Which series to mirror: criteria that must all hold, or one user SELECT."""

    criteria: tuple[Criterion, ...] = ()
    sql: str | None = None

    def __str__(self) -> str:
        if self.sql is not None:
            return repr(self.sql)
        return repr(" AND ".join(str(c) for c in self.criteria) or "(everything)")


def as_scope(spec: Scope | str | Sequence | None) -> Scope:
    """A :class:`Scope` from a scope, a criteria or SQL string, or a list of criteria."""
    if spec is None:
        return Scope()
    if isinstance(spec, Scope):
        return spec
    if isinstance(spec, str):
        return parse_scope(spec)
    out = []
    for item in spec:
        if isinstance(item, Criterion):
            out.append(item)
        elif isinstance(item, str):
            out.extend(parse_scope(item).criteria)
        else:
            raise ScopeError(f"bad criterion {item!r}: write 'FIELD OP VALUE', e.g. "
                             "'collection_id == rider_pilot'")
    return Scope(tuple(out))


def parse_scope(text: str) -> Scope:
    """``FIELD OP VALUE [AND FIELD OP VALUE ...]`` or a single SQL SELECT."""
    if not text.strip():
        return Scope()
    if _SQL_START.match(text):
        check_select(text)
        return Scope(sql=text.strip())
    criteria = []
    for part in split_and(text.strip()):
        try:
            crit = parse_where(part)
        except QueryError as exc:
            raise ScopeError(str(exc).replace("--where", "scope")) from None
        criteria.append(Criterion(crit.field, crit.op, _unquote(crit.value)))
    return Scope(tuple(criteria))


def _unquote(value: Any) -> Any:
    """SQL habit: ``Modality == 'CT'`` means the text CT, not the text 'CT'."""
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def check_select(sql: str) -> None:
    """Refuse anything but exactly one SELECT statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ScopeError(f"cannot parse the scope SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise ScopeError(f"the scope SQL holds {len(statements)} statements; give exactly one "
                         "SELECT SeriesInstanceUID FROM idc_index WHERE ...")
    if statements[0].type != duckdb.StatementType.SELECT:
        kind = statements[0].type.name
        raise ScopeError(f"the scope SQL is a {kind} statement; only a read-only SELECT "
                         "SeriesInstanceUID FROM idc_index WHERE ... is allowed")


def user_relation(conn: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation:
    """The user's checked SELECT as a relation that has a ``SeriesInstanceUID`` column."""
    check_select(sql)
    try:
        rel = conn.sql(sql)
    except duckdb.Error as exc:
        raise ScopeError(f"the scope SQL failed: {_first_line(exc)}") from None
    if rel is None or "seriesinstanceuid" not in {c.lower() for c in rel.columns}:
        shown = ", ".join(rel.columns) if rel is not None else "nothing"
        raise ScopeError(f"the scope SQL returns {shown}; select the SeriesInstanceUID "
                         "column, e.g. SELECT SeriesInstanceUID FROM idc_index WHERE ...")
    return rel


def resolve_column(name: str, known: dict[str, str]) -> str:
    """The catalog's spelling of ``name`` (case-insensitive), or a ScopeError naming the
    closest column."""
    if name in known:
        return name
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.0)
    hint = f"; did you mean {lowered[close[0]]}?" if close else ""
    raise ScopeError(f"unknown catalog column {name!r}{hint}")


def compile_criteria(criteria: Sequence[Criterion],
                     known: dict[str, str]) -> tuple[str, list[Any]]:
    """A WHERE clause and its parameters: identifiers quoted from ``known``, values bound.

    Semantics follow :mod:`mirror.query`: a missing value (NULL) equals ``null``; ``!=``,
    ``not in`` and ``!~`` are the exact negations of ``==``, ``in`` and ``~``.
    """
    clauses, params = [], []
    for crit in criteria:
        column = resolve_column(crit.field, known)
        clause, values = _compile_one(crit, column, known[column])
        clauses.append(clause)
        params.extend(values)
    return (" AND ".join(clauses) or "TRUE"), params


_NEGATED = {"!=": "==", "not in": "in", "!~": "~", "is not": "is"}


def _compile_one(crit: Criterion, column: str, kind: str) -> tuple[str, list[Any]]:
    op = _NEGATED.get(crit.op, crit.op)
    col = quote(column)
    numeric = kind.split("(")[0] in _NUMERIC
    if op in ("ni", "not ni"):
        raise ScopeError(f"{crit}: catalog columns hold one value each; use == or in")
    if op == "is":
        if crit.value is not None:
            raise ScopeError(f"{crit}: {column} is not a true/false column; use == instead")
        positive, values = f"{col} IS NULL", []
    elif op == "==":
        if crit.value is None:
            positive, values = f"{col} IS NULL", []
        else:
            positive, values = f"{col} = ?", [_coerce(crit, column, crit.value, numeric)]
    elif op in ("<", "<=", ">", ">="):
        positive, values = f"{col} {op} ?", [_coerce(crit, column, crit.value, numeric)]
    elif op == "in":
        present = [_coerce(crit, column, v, numeric) for v in crit.value if v is not None]
        parts = [f"{col} IN ({', '.join('?' * len(present))})"] if present else []
        if None in crit.value:
            parts.append(f"{col} IS NULL")
        positive, values = "(" + (" OR ".join(parts) or "FALSE") + ")", present
    elif op == "~":
        if numeric:
            raise ScopeError(f"{crit}: {column} holds numbers; use <, >, == or in")
        positive, values = f"regexp_matches({col}, ?)", [crit.value]
    else:
        raise ScopeError(f"{crit}: operator {crit.op!r} is not supported over the catalog")
    if crit.op in _NEGATED:
        return f"NOT COALESCE({positive}, FALSE)", values
    return f"COALESCE({positive}, FALSE)", values


def _coerce(crit: Criterion, column: str, value: Any, numeric: bool) -> Any:
    """The value as the column's type: text columns compare as text, numbers as numbers."""
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ScopeError(f"{crit}: compare {column} with a string or a number")
    if not numeric:
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value) if re.search(r"[.eE]", value) else int(value)
    except ValueError:
        raise ScopeError(f"{crit}: {column} holds numbers; {value!r} is not one") from None


# -- diffs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeriesChange:
    """How one series differs between two catalogs.

    ``kind`` is ``new`` (only in the new catalog), ``revised`` (a new ``crdc_series_uuid``:
    new bytes under a new prefix), ``moved`` (same uuid, other ``aws_bucket``: the same
    bytes elsewhere), ``metadata`` (same uuid and bucket; licence, collection or DOI
    changed) or ``removed`` (only in the old catalog). ``changed`` names the fields of
    :data:`DIFF_FIELDS` that differ; ``old``/``new`` hold their values.
    ``old_in_prior`` says whether the new catalog's ``prior_versions_index`` still lists the
    old uuid (None when that table is absent): IDC keeps such versions readable.
    """

    series_uid: str
    kind: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    changed: tuple[str, ...] = field(default=())
    old_in_prior: bool | None = None


def diff(old: Catalog, new: Catalog, scope: Scope | str | None = None,
         batch_rows: int = BATCH_ROWS) -> Iterator[SeriesChange]:
    """Stream the series that differ between two catalogs, by ``SeriesInstanceUID``.

    A criteria scope is applied to both sides, so a series whose collection was renamed out
    of the scope shows as ``removed``. SQL scopes are refused here (each side would need its
    own run of the user's statement).
    """
    for batch in diff_batches(old, new, scope, batch_rows):
        for row in batch.to_pylist():
            yield _change(row)


def diff_batches(old: Catalog, new: Catalog, scope: Scope | str | None = None,
                 batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """:func:`diff` as Arrow batches (columns ``SeriesInstanceUID, kind, old_*, new_*,
    old_in_prior``), for callers that keep to Arrow."""
    scope = as_scope(scope)
    if scope.sql is not None:
        raise ScopeError("a catalog diff takes FIELD OP VALUE criteria, not SQL; "
                         "write e.g. 'collection_id == rider_pilot'")
    old_cols, new_cols = old.columns(), new.columns()
    for cols, which in ((old_cols, old), (new_cols, new)):
        missing = [f for f in ("SeriesInstanceUID", *DIFF_FIELDS) if f not in cols]
        if missing:
            raise CatalogError(f"catalog {which.version.package} lacks {', '.join(missing)}; "
                               "it is not an idc_index table")
    old_where, old_params = compile_criteria(scope.criteria, old_cols)
    new_where, new_params = compile_criteria(scope.criteria, new_cols)
    fields = ", ".join(quote(f) for f in ("SeriesInstanceUID", *DIFF_FIELDS))
    picked = ", ".join([f"o.{quote(f)} AS {quote('old_' + f)}" for f in DIFF_FIELDS]
                       + [f"n.{quote(f)} AS {quote('new_' + f)}" for f in DIFF_FIELDS])
    meta_old = ", ".join(f"o.{quote(f)}" for f in METADATA_FIELDS)
    meta_new = ", ".join(f"n.{quote(f)}" for f in METADATA_FIELDS)
    has_prior = "prior_versions_index" in new.paths
    prior = ("LEFT JOIN (SELECT DISTINCT crdc_series_uuid AS prior_uuid FROM "
             "new_prior_versions_index) p ON p.prior_uuid = o.crdc_series_uuid "
             if has_prior else "")
    in_prior = ("CASE WHEN o.crdc_series_uuid IS NULL THEN NULL ELSE p.prior_uuid IS NOT NULL "
                "END" if has_prior else "NULL::BOOLEAN")
    sql = f"""
        WITH o AS (SELECT {fields} FROM old_idc_index WHERE {old_where}),
             n AS (SELECT {fields} FROM new_idc_index WHERE {new_where})
        SELECT * FROM (
          SELECT COALESCE(n.SeriesInstanceUID, o.SeriesInstanceUID) AS SeriesInstanceUID,
            CASE WHEN o.SeriesInstanceUID IS NULL THEN 'new'
                 WHEN n.SeriesInstanceUID IS NULL THEN 'removed'
                 WHEN n.crdc_series_uuid IS DISTINCT FROM o.crdc_series_uuid THEN 'revised'
                 WHEN n.aws_bucket IS DISTINCT FROM o.aws_bucket THEN 'moved'
                 WHEN ({meta_new}) IS DISTINCT FROM ({meta_old}) THEN 'metadata'
            END AS kind,
            {picked}, {in_prior} AS old_in_prior
          FROM o FULL OUTER JOIN n ON o.SeriesInstanceUID = n.SeriesInstanceUID {prior}
        ) WHERE kind IS NOT NULL"""
    with read_only_connection([(old, "old_"), (new, "new_")]) as conn:
        try:
            rel = conn.sql(sql, params=old_params + new_params)
            yield from rel.to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise CatalogError(f"catalog diff failed: {_first_line(exc)}") from None


def _change(row: dict[str, Any]) -> SeriesChange:
    old = {f: row["old_" + f] for f in DIFF_FIELDS}
    new = {f: row["new_" + f] for f in DIFF_FIELDS}
    kind = row["kind"]
    if kind == "new":
        return SeriesChange(row["SeriesInstanceUID"], kind, None, new, DIFF_FIELDS)
    if kind == "removed":
        return SeriesChange(row["SeriesInstanceUID"], kind, old, None, DIFF_FIELDS,
                            row["old_in_prior"])
    changed = tuple(f for f in DIFF_FIELDS if old[f] != new[f])
    return SeriesChange(row["SeriesInstanceUID"], kind, old, new, changed, row["old_in_prior"])


def diff_counts(old: Catalog, new: Catalog, scope: Scope | str | None = None) -> dict[str, int]:
    """How many series of each kind differ (every kind present, zero when none)."""
    counts = dict.fromkeys(KINDS, 0)
    for batch in diff_batches(old, new, scope):
        for kind, n in zip(*_value_counts(batch.column("kind")), strict=True):
            counts[kind] += n
    return counts


def _value_counts(column: pa.Array) -> tuple[list[str], list[int]]:
    counted = column.value_counts()
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()


def changes_since(catalog: Catalog, release: int,
                  scope: Scope | str | None = None) -> dict[str, list[str]]:
    """New, revised and removed series since IDC release ``release``, from one catalog.

    Needs ``series_init_idc_version``/``series_revised_idc_version`` (idc-index-data
    24.1.0 on). Moves and metadata-only changes leave no trace here: diff against the
    previous catalog to see those. ``removed`` lists the SeriesInstanceUIDs whose versions
    ``prior_versions_index`` shows served at or after ``release`` and that ``idc_index``
    no longer has (retired-bucket versions are not in that table; changes note §2.2).
    """
    scope = as_scope(scope)
    cols = catalog.columns()
    if not all(c in cols for c in VERSION_COLUMNS):
        raise CatalogError(f"catalog {catalog.version.package} lacks {VERSION_COLUMNS[1]} "
                           "(added in idc-index-data 24.1.0); diff it against the previous "
                           "catalog with diff() instead")
    where, params = compile_criteria(scope.criteria, cols)
    out: dict[str, list[str]] = {"new": [], "revised": [], "removed": []}
    with catalog.connect() as conn:
        rows = conn.sql(
            f"SELECT SeriesInstanceUID, CASE WHEN series_init_idc_version > ? THEN 'new' "
            f"ELSE 'revised' END FROM idc_index WHERE ({where}) AND "
            f"series_revised_idc_version > ? ORDER BY 1",
            params=[release, *params, release]).fetchall()
        for uid, kind in rows:
            out[kind].append(uid)
        if "prior_versions_index" in catalog.paths:
            prior_cols = catalog.columns("prior_versions_index")
            usable = [c for c in scope.criteria if resolve_column(c.field, cols) in prior_cols]
            if len(usable) != len(scope.criteria):
                return out  # the scope names columns the prior table lacks: cannot tell
            pwhere, pparams = compile_criteria(usable, prior_cols)
            out["removed"] = [r[0] for r in conn.sql(
                f"SELECT DISTINCT SeriesInstanceUID FROM prior_versions_index p WHERE "
                f"({pwhere}) AND max_idc_version >= ? AND NOT EXISTS (SELECT 1 FROM idc_index "
                f"i WHERE i.SeriesInstanceUID = p.SeriesInstanceUID) ORDER BY 1",
                params=[*pparams, release]).fetchall()]
    return out


# -- writing catalogs (sandboxes, tests) ---------------------------------------------------

def write_catalog(folder: str | Path, tables: dict[str, pa.Table], build: str) -> Catalog:
    """Write ``<table>.parquet`` files stamped with ``build`` (as IDC's are) and open them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        if name not in TABLES:
            raise CatalogError(f"unknown catalog table {name!r}; use one of {', '.join(TABLES)}")
        meta = dict(table.schema.metadata or {})
        meta[VERSION_KEY] = build.encode()
        tmp = folder / f".{name}.parquet.tmp"
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        tmp.replace(folder / f"{name}.parquet")
    return Catalog.from_dir(folder)


def read_table(catalog: Catalog, table: str = "idc_index",
               scope: Scope | str | None = None) -> pa.Table:
    """A whole (small) table in memory: for sandboxes and tests, never the full catalog."""
    with catalog.connect() as conn:
        if table == "idc_index":
            scope = as_scope(scope)
            return catalog._relation(conn, scope, list(catalog.columns()),
                                     catalog.columns()).to_arrow_table()
        return conn.sql(f"SELECT * FROM {quote(table)}").to_arrow_table()
