"""The seam between the engine and an archive: one Source protocol, one declarative spec.

The engine (store, index, sync, snapshots, export, verify, gc, reindex) knows no archive.
An archive is described by a :class:`SourceSpec` (what it holds) and talked to by a
:class:`Source` (how to ask for it), in the spirit of pooch's ``Downloader`` and
``Processor`` protocols: the source does the talking, the engine does the rest.

A spec declares:

- its **kinds** (:class:`KindSpec`): the objects it holds, how they relate (a parent
  kind: image → segmentation; collection → patient → study → series → instance), the id
  rule of each kind and how an id picks one of the 16 shard folders, how a document
  names its object, and which typed index table (if any) projects it;
- its **file roles** (:class:`FileRole`): the files an object may have, with the checks a
  file must pass before it is published (magic bytes and where they sit, whole-file end
  markers, a validator that may decode it) and derivations made from it (the ISIC
  superpixel PNG's decoded ``spidx_*.npz``, like pooch's ``processor=``);
- the URL shape that selects it, the sync parts and file options a run may choose, and
  what a snapshot manifest says about the archive.

A :class:`Source` lists and fetches documents (through a :class:`DocumentRun` the engine
hands it, which stores, indexes and counts them) and plans file tasks; the engine fetches,
checks, stores and indexes files, persists the plan, and publishes.

The registry at the end of this module maps source names to their packages, imported
only when needed. It is the only place outside ``mirror/sources/<name>/`` that names an
archive's package.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from mirror.errors import MirrorError, UnknownSourceError

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from sqlalchemy.orm import Session

    from mirror.sources.http import HttpClient
    from mirror.store import ObjectStore, StoredFile
    from mirror.sync.summary import SyncSummary

HEX_ID = re.compile(r"[0-9a-f]{24}")
MAX_BYTES_PER_PIXEL, MAX_OVERHEAD = 8, 16 * 2**20
MAX_BYTES_UNKNOWN_SHAPE = 2**30


def shard_by_hex_suffix(object_id: str) -> str:
    """Last hex digit of the id: right for ids that end in a counter (ObjectIds) or are
    random hex (UUIDs), whose last digit spreads evenly."""
    last = object_id[-1:].lower()
    return last if last and last in "0123456789abcdef" else shard_by_hash(object_id)


def shard_by_hash(object_id: str) -> str:
    """Last hex digit of the id's SHA-256: for ids that are not hex (``ISIC_0000000``,
    DICOM UIDs), whose own last character would fill ten folders or one."""
    return hashlib.sha256(object_id.encode("utf-8")).hexdigest()[-1]


@dataclass(frozen=True)
class KindSpec:
    """One kind of object an archive holds (image, segmentation, series, ...).

    ``table`` names the kind's projection (``images``) in selections and SQL. ``model`` is
    the typed index table a source may declare for it (ISIC v1 keeps its own); kinds
    without one live in the generic ``objects`` table. ``id_pattern`` must match the whole
    id: ids go into URLs, file names and batch requests.
    """

    name: str
    table: str
    id_pattern: re.Pattern[str]
    parent: str | None = None
    shard: Callable[[str], str] = shard_by_hash
    model: Any = None
    id_of: Callable[[dict], Any] = field(default=lambda doc: doc.get("_id"))
    name_of: Callable[[dict], Any] = field(default=lambda doc: doc.get("name"))
    parent_of: Callable[[dict], Any] | None = None
    columns: Callable[[dict], dict] | None = None  # typed columns of ``model``
    index: Callable[[Session, list[dict]], None] | None = None  # extra rows (links, ...)
    on_removed: Callable[[Session, list[str]], None] | None = None  # drop those extra rows
    # what the query projection shows of a document (None: all of it); a DICOM header's
    # hundreds of tag paths would make a column each, keywords make a few named ones
    projected: Callable[[dict], dict] | None = None
    # False: the index keeps the document as the store's canonical JSON (sorted keys),
    # reusing the store's encoding instead of a second one per document. For DICOM JSON
    # headers, whose keys are tags, sorted is their own order (a TCIA or IDC sync spent a
    # fifth of its main thread encoding them again); other kinds keep the archive's order.
    ordered: bool = True
    # the fields ``id_of``, ``name_of`` and ``parent_of`` read, named in failure messages
    id_field: str = "_id"
    name_field: str = "name"
    parent_field: str = "parent"
    # dotted paths of references to other objects (``dataset._id``, ``imageId``): when
    # present they must be text, or the document is a failed item, not a dangling row
    references: tuple[str, ...] = ()
    # names users bring from exports or other tools (an export's ``isic_id`` column) and
    # the field path each means: the "did you mean" of a criterion on a field no object has
    aliases: tuple[tuple[str, str], ...] = ()

    def valid_id(self, object_id: object) -> bool:
        return isinstance(object_id, str) and bool(self.id_pattern.fullmatch(object_id))


def document_problem(kind: KindSpec, doc: object, max_depth: int) -> str | None:
    """Why ``doc`` cannot be a document of ``kind`` (naming the field), or None.

    Every source's documents pass here before they are stored (``DocumentRun.store_docs``),
    so a malformed one (no id, a name that is a list, a reference that is an object,
    nesting deeper than any real document) is one failed item, never a traceback.
    """
    if not isinstance(doc, dict):
        return f"not a JSON object but {_type_name(doc)}"
    object_id = kind.id_of(doc)
    if object_id is None:
        return f"field {kind.id_field!r} is missing or of the wrong type"
    if not kind.valid_id(object_id):
        return f"field {kind.id_field!r} is {_shown(object_id)}, not a valid {kind.name} id"
    for label, read in ((kind.name_field, kind.name_of), (kind.parent_field, kind.parent_of)):
        value = read(doc) if read is not None else None
        if value is not None and not isinstance(value, str):
            return f"field {label!r} is {_type_name(value)}, expected text"
    for path in kind.references:
        problem = _reference_problem(doc, path.split("."))
        if problem is not None:
            return problem
    deep = _too_deep(doc, max_depth)
    if deep is not None:
        return f"field {deep!r} nests deeper than {max_depth} levels"
    if kind.columns is not None:
        try:
            kind.columns(doc)
        except Exception as exc:  # noqa: BLE001 - a column the document cannot give
            return f"a field has the wrong type ({type(exc).__name__}: {exc})"[:200]
    return None


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(
        type(value), type(value).__name__)


def _shown(value: object) -> str:
    return ascii(value)[:60] if isinstance(value, str) else _type_name(value)


def _reference_problem(doc: dict, path: list[str]) -> str | None:
    """Why the reference at ``path`` is wrong-typed (absent or null is fine), or None."""
    value: object = doc
    for n, key in enumerate(path):
        if value is None:
            return None
        if not isinstance(value, dict):
            return (f"field {'.'.join(path[:n])!r} is {_type_name(value)}, expected an "
                    "object")
        value = value.get(key)
    if value is not None and not isinstance(value, str):
        return f"field {'.'.join(path)!r} is {_type_name(value)}, expected text (an id)"
    return None


def _too_deep(doc: object, max_depth: int) -> str | None:
    """The top-level field under which ``doc`` nests deeper than ``max_depth``
    (iteratively: no recursion limit), or None. Only that first key is carried down: a
    DICOM header has thousands of nested values, and a dotted path built for each cost
    4 % of a TCIA sync."""
    if not isinstance(doc, dict | list):
        return None
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    stack: list[tuple[object, int, str]] = [
        (child, 2, str(key)) for key, child in items if isinstance(child, dict | list)]
    while stack:
        value, depth, top = stack.pop()
        if depth > max_depth:
            return top
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1, top) for child in children  # type: ignore[union-attr]
                     if isinstance(child, dict | list))
    return None


@dataclass(frozen=True)
class FileTask:
    """One file to fetch: the object it belongs to, its role, and what to name it.

    ``url`` is where the source says the bytes are (None: the source fetches them itself,
    see :meth:`Source.fetch_file`); ``shape`` is (height, width) when the object says so,
    which bounds sizes and lets decoders check dimensions; ``replace`` asks for a new
    version of a file the mirror already has (the archive changed it under the same role).
    """

    kind: str
    object_id: str
    role: str
    option: str
    name: str | None = None
    url: str | None = None
    shape: tuple[int, int] | None = None
    replace: bool = False
    size: int | None = None  # what the archive says the file weighs, when it says
    public_url: bool = False  # ``url`` needs no header, token or cookie (a public bucket):
    # the engine may fetch it through its direct client (mirror.sources.direct)

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1] if self.shape else 0

    @property
    def max_bytes(self) -> int:
        """The size limit of this file: far above any real encoding of its pixels (raw
        RGB is 3 bytes a pixel) or of what the archive declared, but finite, so that an
        endless or absurd body is cut off, not stored."""
        if self.size:
            return MAX_OVERHEAD + 4 * self.size
        if not self.pixels:
            return MAX_BYTES_UNKNOWN_SHAPE
        return MAX_OVERHEAD + MAX_BYTES_PER_PIXEL * self.pixels


@dataclass(frozen=True)
class Derived:
    """A file derived from a fetched one (``source_sha256`` links them in the index)."""

    role: str
    data: bytes
    ext: str
    content_type: str


@dataclass(frozen=True)
class FileRole:
    """A file an object may have, and the checks it passes before it is published.

    ``prefix`` starts its file name in the store (``thumb_<id>.jpg``); ``named`` adds the
    object's name (isicarchive's cache names, ``image_<id>_<name>.jpg``). ``magic`` is a
    tuple of accepted first bytes found at ``magic_offset`` (DICOM: ``DICM`` at 128).
    ``whole`` checks JPEG/PNG end markers, so a body cut short under a short
    ``Content-Length`` is refused. ``validate(path, task)`` sees the complete temp file
    and raises to refuse it; what it returns is handed to ``derive(task, value, path)``,
    which returns the derived files (so a PNG is decoded once for both).
    ``option`` is the ``--blobs`` choice that asks for the role; derived roles have
    ``derived_from`` instead.
    """

    name: str
    prefix: str
    option: str | None
    magic: tuple[bytes, ...] = ()
    magic_offset: int = 0
    whole: bool = False
    named: bool = False
    exts: tuple[str, ...] = (".jpg", ".png", ".bmp", ".gif")
    validate: Callable[[Path, FileTask], Any] | None = None
    derive: Callable[[FileTask, Any, Path], list[Derived]] | None = None
    derived_from: str | None = None
    exported: bool = True  # offered by ``export files`` and snapshots
    bytes_per_pixel: float = 0.1  # a rule of thumb for the plan's size, before any is known
    fixed_bytes: int = 0


@dataclass(frozen=True)
class SourceSpec:
    """What an archive holds and how the mirror lays it out (see the module docstring).

    ``namespace`` is the folder under the mirror root (one source per root).
    ``url_pattern`` recognises the source from ``--url``. ``parts`` are the sync's
    ``--what`` choices; ``file_options`` the ``--blobs`` choices.
    """

    name: str
    archive: str
    api: str
    title: str
    namespace: str
    organization: str
    url_pattern: re.Pattern[str]
    kinds: tuple[KindSpec, ...]
    roles: tuple[FileRole, ...]
    main_kind: str
    parts: frozenset[str] = frozenset()
    file_options: frozenset[str] = frozenset()
    default_url: str | None = None
    source: str = ""  # "module:Class": the Source; importing it may cost heavy libraries
    sandbox: str | None = None  # "module:function" serving a local imitation
    # conn -> {table: (columns, rows)}: link tables published beside the kinds' projections
    links: Callable[[Any], dict] | None = None
    # the sets a mirror's objects come in, listed by 'mirror names' (what --dataset,
    # --collection... take): (label, table, name field, members). A table other than the
    # main kind's lists its objects by the name field, each counted by the main kind's
    # ``members`` field holding its _id (None: not counted); the main kind's own table
    # lists the distinct values of the name field, counted.
    groups: tuple[tuple[str, str, str, str | None], ...] = ()

    def kind(self, name: str) -> KindSpec:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise MirrorError(f"{self.title} has no object kind {name!r}; it has: "
                          f"{', '.join(k.name for k in self.kinds)}")

    def has_kind(self, name: str) -> bool:
        return any(k.name == name for k in self.kinds)

    def kind_of_table(self, table: str) -> KindSpec:
        for kind in self.kinds:
            if table in (kind.table, kind.name):
                return kind
        raise MirrorError(f"{self.title} has no kind {table!r}; use one of "
                          f"{', '.join(k.table for k in self.kinds)}")

    def role(self, name: str) -> FileRole:
        for role in self.roles:
            if role.name == name:
                return role
        raise MirrorError(f"{self.title} has no file role {name!r}")

    def role_for_option(self, option: str) -> FileRole:
        for role in self.roles:
            if role.option == option:
                return role
        raise MirrorError(f"unknown file choice {option!r}; use "
                          f"{', '.join(sorted(self.file_options))}")

    def role_for_prefix(self, prefix: str) -> FileRole | None:
        return next((r for r in self.roles if r.prefix == prefix), None)

    def shard_of(self, kind: str, object_id: str) -> str:
        return self.kind(kind).shard(object_id) if self.has_kind(kind) else \
            shard_by_hex_suffix(object_id)


class DocumentRun(Protocol):
    """What the engine gives a source's documents phase (see ``mirror.sync.documents``)."""

    session: Session
    store: ObjectStore
    executor: Executor
    summary: SyncSummary
    public: bool
    window: int

    def commit(self) -> None: ...
    def store_docs(self, kind: str, docs: Iterable[dict]) -> list[tuple[dict, StoredFile]]: ...
    def record(self, kind: str, stored: list[tuple[dict, StoredFile]], **extra: Any
               ) -> None: ...
    def remove_missing(self, kind: str, listed: set[str], *,
                       within: set[str] | None = None) -> None: ...
    def offer(self, tasks: list[FileTask]) -> None: ...  # files to begin while listing


@runtime_checkable
class Source(Protocol):
    """How the engine talks to one archive. One instance serves one sync run.

    ``sync_documents`` lists and fetches what changed, storing it through ``run``; it
    returns the ids of the main kind whose files are in scope (None: every object).
    ``plan_files`` says which files the index lacks (or must replace). The engine
    downloads ``task.url`` unless the source implements ``fetch_file`` (one request that
    yields many files, such as a TCIA series zip).
    """

    spec: ClassVar[SourceSpec]
    http: HttpClient

    def login(self, username: str, password: str) -> None: ...

    # Optional, for sources that take logins: ``check_login()`` asks the archive whether
    # the login still holds and raises ``LoginLostError`` when it is answered anonymously
    # (an expired token, a proxy that strips it, a token the archive ignores). The engine
    # calls it before marking anything removed (``DocumentRun.remove_missing``).

    def sync_documents(self, run: DocumentRun, options: Any) -> set[str] | None: ...

    def plan_files(self, session: Session, scope: set[str] | None,
                   options: frozenset[str]) -> list[FileTask]: ...


# -- the registry ------------------------------------------------------------------------

#: name -> "module:attribute" of its spec. Adding a source adds one line here.
REGISTRY: dict[str, str] = {
    "isic-v1": "mirror.sources.isic_v1.spec:SPEC",
    "idc": "mirror.sources.idc.spec:SPEC",
    "idc-api-v1": "mirror.sources.idc.spec:V1_SPEC",
    "isic-v2": "mirror.sources.isic_v2.spec:SPEC",
    "tcia-v4": "mirror.sources.tcia.spec:SPEC",
    "tcia-v3": "mirror.sources.tcia.spec:V3_SPEC",
}
"""Each registered source's :class:`SourceSpec`, as ``"module:attribute"``. A spec module is
cheap to import (no client libraries), so matching a URL or naming a kind loads no source's
dependencies; the spec names its Source class in :attr:`SourceSpec.source`, imported only
when something syncs, reads or exports."""
#: names older mirrors wrote into mirror.json
ALIASES = {"isic": "isic-v1"}


def _attribute(path: str) -> Any:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def spec_of(name: str) -> SourceSpec:
    """The spec registered as ``name`` (or one of its old names)."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise UnknownSourceError(f"unknown source {name!r}; known sources: "
                                 f"{', '.join(sorted(REGISTRY))}")
    return _attribute(REGISTRY[name])


def source_class(name: str) -> type[Source]:
    """The Source class registered as ``name`` (or one of its old names)."""
    return _attribute(spec_of(name).source)


def source_hooks(name: str, hooks: str) -> Any:
    """The module a source names for a group of engine hooks (``snapshots``,
    ``exports``): functions the generic snapshot and export code calls."""
    path = getattr(source_class(name), hooks, None)
    if path is None:
        raise MirrorError(f"{spec_of(name).title} offers no {hooks}")
    return importlib.import_module(path)


def load_all() -> None:
    """Import every registered spec, so the index metadata holds every source's tables
    (Alembic's autogenerate and the schema tests compare against all of them). A source with
    typed tables of its own declares them in a module its spec imports (ISIC v1's
    :mod:`~mirror.sources.isic_v1.models`); the sources themselves stay unloaded, so running
    the migrations costs no client libraries."""
    for name in REGISTRY:
        spec_of(name)


def source_for_url(url: str) -> str:
    """The registered source whose URL shape ``url`` has, or a one-line error."""
    matches = [name for name in sorted(REGISTRY) if spec_of(name).url_pattern.search(url)]
    if len(matches) == 1:
        return matches[0]
    shapes = "; ".join(f"{n}: {spec_of(n).url_pattern.pattern}" for n in sorted(REGISTRY))
    if not matches:
        raise UnknownSourceError(f"cannot tell the archive from the URL {url!r}; pass "
                                 f"--source NAME (known shapes: {shapes})")
    raise UnknownSourceError(f"the URL {url!r} fits several sources ({', '.join(matches)}); "
                             "pass --source NAME")
