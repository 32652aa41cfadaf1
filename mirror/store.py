"""The hex-sharded object store: every file of a mirror, written atomically.

Layout (relative to the namespace folder, e.g. ``<root>/isic/``)::

    store/<shard>/<prefix>_<id>[_<name>].<ext>                files, bytes exactly as served
    store/<shard>/<prefix>_<id>[_<name>].<sha256[:16]>.<ext>  a later version of that file
    store/<shard>/<kind>_<id>.<sha256[:16]>.json.zst          documents, canonical JSON, zstd

The store knows no archive: kinds, file prefixes and the shard rule come from the
source's spec (:mod:`mirror.sources.base`). ``<shard>`` is one hex digit chosen by the
kind's rule: the last digit of a hex id (an ObjectId ends in a counter, a UUID is
random, so it spreads evenly; the first digits of an ObjectId are a timestamp and would
put everything in one folder), or the last hex digit of the id's SHA-256 for ids that are
not hex (``ISIC_0000000``, DICOM UIDs).

A file write never opens a final path: bytes go to a unique temp file in the target's
own folder, are hashed and checked while streaming, fsynced, and published with
``os.link`` (which never overwrites). A reader therefore sees a whole file or no
file. Published files are read-only.

Documents are the exception, because they are small, many (a whole-IDC catalog sync
stores a million) and named by their own hash: one ``O_EXCL | O_NOFOLLOW`` create of the
final name, one write. Nothing reads a document before an index row names it, and rows
are committed only after :meth:`ObjectStore.flush`, so no reader meets one half-written;
a file a killed writer left cut short is never trusted, because :meth:`ObjectStore.put_json`
re-hashes whatever it finds at a document's name and replaces what does not match, and
``mirror verify`` hashes every document the index names.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from mirror.errors import DiskFullError, IntegrityError, SymlinkError, UnsafeNameError
from mirror.layout import SHARDS, Layout, shared_mkdir

# \A...\Z, not ^...$: "$" also matches before a trailing newline, so "abc\n" would pass
# a .match(); check with .fullmatch all the same.
HEX_ID = re.compile(r"\A[0-9a-f]{24}\Z")
SAFE_NAME = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # ObjectIds, ISIC_nnnnnnn, DICOM UIDs
SAFE_WORD = re.compile(r"[a-z][a-z0-9]{0,31}")  # document kinds and file prefixes
TEMP_PREFIX = ".tmp-"
ZSTD_LEVEL = 3
CHUNK = 1024 * 1024
DICOM_OFFSET = 128  # a DICOM file: 128-byte preamble, then "DICM"
MAGIC_EXT = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"),
             (b"BM", ".bmp"), (b"PK\x03\x04", ".npz"))
JPEG_EOI, PNG_IEND = b"\xff\xd9", b"IEND\xaeB`\x82"
# A JPEG may carry padding or a maker's trailer after its end-of-image marker: look for
# the marker this far from the end. (It cannot occur inside entropy-coded data.)
JPEG_TAIL = 4096
TYPE_EXT = {"image/jpeg": ".jpg", "image/jpg": ".jpg", "image/png": ".png", "image/gif": ".gif",
            "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp", "application/dicom": ".dcm"}


@dataclass(frozen=True)
class StoredFile:
    """A published file: its path relative to the namespace folder, SHA-256 and size.

    For documents, ``sha256`` and ``size`` are those of the uncompressed canonical JSON.
    """

    relpath: str
    sha256: str
    size: int
    # the canonical JSON of a document, when asked for (``put_json(keep_text=True)``)
    text: str | None = field(default=None, compare=False, repr=False)


def shard_of(object_id: str) -> str:
    """The default shard rule: last hex digit of a 24-hex ObjectId, else of the id's
    SHA-256. Sources choose theirs per kind (:class:`mirror.sources.base.KindSpec`)."""
    if HEX_ID.fullmatch(object_id):
        return object_id[-1]
    return hashlib.sha256(object_id.encode("utf-8")).hexdigest()[-1]


def safe_name(name: str) -> str:
    """``name`` if it is safe inside a file name, else :class:`UnsafeNameError`.

    Names come from the archive and are untrusted: only ``[A-Za-z0-9._-]``, at most
    128 characters, and never ``.`` or ``..``.
    """
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name in (".", ".."):
        shown = repr(name)[:60]
        raise UnsafeNameError(f"refusing unsafe name {shown} from the archive "
                              "(allowed: letters, digits, '.', '_', '-', up to 128)")
    return name


def _safe_id(object_id: str) -> str:
    if (not isinstance(object_id, str) or not SAFE_ID.fullmatch(object_id)
            or ".." in object_id or object_id.startswith(".")):
        raise UnsafeNameError(f"refusing unsafe object id {repr(object_id)[:60]} from the archive")
    return object_id


def _safe_word(word: str, what: str) -> str:
    if not isinstance(word, str) or not SAFE_WORD.fullmatch(word):
        raise ValueError(f"unusable {what} {word!r}: lower-case letters and digits only")
    return word


def blob_relpath(prefix: str, object_id: str, *, name: str | None = None, ext: str,
                 shard: str | None = None) -> str:
    """Where a file lives: ``<prefix>_<id>[_<name>]<ext>`` in its shard folder.

    ``prefix`` comes from the source's file role (ISIC keeps isicarchive's cache names:
    ``image_<id>_<name>.jpg``, ``thumb_<id>.jpg``...); ``shard`` from the kind's rule
    (default :func:`shard_of`)."""
    _safe_word(prefix, "file prefix")
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", ext):
        raise UnsafeNameError(f"refusing unsafe file extension {ext!r}")
    stem = f"{prefix}_{_safe_id(object_id)}"
    if name:
        stem += f"_{safe_name(name)}"
    return f"store/{_shard(shard, object_id)}/{stem}{ext}"


def versioned_relpath(relpath: str, sha256_hex: str) -> str:
    """The path of a later version of the file at ``relpath``: its hash before the
    extension (``image_<id>_<name>.<sha256[:16]>.jpg``), so versions never collide."""
    folder, _, filename = relpath.rpartition("/")
    stem, dot, ext = filename.rpartition(".")
    return f"{folder}/{stem}.{sha256_hex[:16]}{dot}{ext}"


def doc_relpath(kind: str, object_id: str, sha256_hex: str, shard: str | None = None) -> str:
    """Where one version of a JSON document lives: content-addressed by its SHA-256."""
    _safe_word(kind, "document kind")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise ValueError("sha256_hex must be 64 lower-case hex digits")
    return (f"store/{_shard(shard, object_id)}/{kind}_{_safe_id(object_id)}"
            f".{sha256_hex[:16]}.json.zst")


def _shard(shard: str | None, object_id: str) -> str:
    if shard is None:
        return shard_of(object_id)
    if shard not in SHARDS or len(shard) != 1:
        raise ValueError(f"shard must be one hex digit, got {shard!r}")
    return shard


def extension_for(content_type: str, first_bytes: bytes = b"") -> str:
    """File extension from magic bytes first, then Content-Type; they must agree."""
    by_magic = next((ext for magic, ext in MAGIC_EXT if first_bytes.startswith(magic)), None)
    if first_bytes[DICOM_OFFSET:DICOM_OFFSET + 4] == b"DICM":
        by_magic = ".dcm"
    by_type = TYPE_EXT.get((content_type or "").split(";")[0].strip().lower())
    if by_magic and by_type and by_magic != by_type:
        raise IntegrityError(f"Content-Type {content_type!r} but the bytes are {by_magic[1:]}")
    if by_magic or by_type:
        if first_bytes and not by_magic:
            declared = content_type.split(";")[0]
            raise IntegrityError(f"Content-Type {content_type!r} but the bytes are not "
                                 f"{declared!r} (they start {first_bytes[:16]!r})")
        return by_magic or by_type
    raise IntegrityError(f"unrecognised file (Content-Type {content_type!r}, "
                         f"starts {first_bytes[:16]!r})")


def canonical_json(doc: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal documents give equal bytes and hashes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


class ObjectStore:
    """Atomic, verified writes and plain reads of the files under ``layout.store``."""

    def __init__(self, layout: Layout, batch_durability: bool = False):
        """``batch_durability``: files are not fsynced one by one when written but all at
        once by :meth:`flush` (one ``syncfs``), which callers run before committing index
        rows that name them (git's ``core.fsyncMethod=batch`` makes the same trade). A
        power cut before the flush can leave a published file incomplete; nothing indexes
        it, and the sync re-checks such files before adopting them."""
        self.layout = layout
        self.base = layout.base
        self.batch_durability = batch_durability
        self._touched: set[Path] = set()
        self._touched_dirs: set[str] = set()  # documents' folders, as text (no Path per file)
        self._folders: dict[str, str] = {}  # store/<shard> -> absolute folder, checked once
        self._unsynced: list[Path | str] = []
        self._lock = threading.Lock()
        self._space_lock = threading.Lock()  # only _check_space's counter
        self.journal: Path | None = None  # see :meth:`keep_journal`
        self._journal_fd: int | None = None  # kept open: one write per published file
        self._temp_names = itertools.count()  # with _temp_token: unique, no getrandom each
        self._temp_token = os.urandom(6).hex()
        self._space: tuple[float, int] = (0.0, 0)  # (checked at, free bytes left) see _check_space

    # -- paths ---------------------------------------------------------------------------

    def path(self, relpath: str) -> Path:
        """Absolute path of ``relpath``, refusing anything that would leave the store,
        a symbolic link as its shard folder or as the file included."""
        if not isinstance(relpath, str) or "\x00" in relpath or not relpath.startswith("store/"):
            raise UnsafeNameError(f"refusing path {relpath!r} outside the store")
        parts = relpath.split("/")
        if any(p in ("", ".", "..") for p in parts) or len(parts) != 3:
            raise UnsafeNameError(f"refusing path {relpath!r} outside the store")
        if parts[1] not in SHARDS:
            raise UnsafeNameError(f"refusing path {relpath!r}: not a shard folder")
        path = self.base / relpath
        _refuse_link(path.parent)
        _refuse_link(path)
        return path

    def exists(self, relpath: str) -> bool:
        """True when ``relpath`` is a regular file (a link there is refused, as by
        :meth:`path`). Once this store object has checked the shard folder it is one
        ``lstat``: the files phase asks this of every extension of every planned file."""
        folder, _, name = relpath.rpartition("/")
        known = self._folders.get(folder)
        if known is None or name in ("", ".", "..") or "\x00" in name:
            return self.path(relpath).is_file()
        try:
            mode = os.lstat(f"{known}/{name}").st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISLNK(mode):
            _refuse_link(Path(known) / name)
        return stat.S_ISREG(mode)

    def _write_path(self, relpath: str) -> Path:
        """The absolute path to publish ``relpath`` at: checked as :meth:`path` checks it,
        its shard folder made and checked once per store object. The file's own name needs
        no check: it is created by ``os.link``, which never follows or replaces a link."""
        folder, _, name = relpath.rpartition("/")
        if name in ("", ".", "..") or "\x00" in name:
            raise UnsafeNameError(f"refusing path {relpath!r} outside the store")
        known = self._folders.get(folder)
        if known is None:
            known = self._checked_folder(folder)  # checks the rest as path() does
        return Path(known) / name

    def _temp_name(self) -> str:
        """A temp file name no other writer uses: ``.tmp-<token><n>.<pid>`` (the pid lets
        the next writer remove the temps of a dead one, see :meth:`clean_temp`)."""
        return f"{TEMP_PREFIX}{self._temp_token}{next(self._temp_names):x}.{os.getpid()}"

    # -- writing -------------------------------------------------------------------------

    def put_stream(self, relpath: str, chunks: Iterable[bytes], *,
                   expected_size: int | None = None,
                   magic: bytes | tuple[bytes, ...] | None = None,
                   max_size: int | None = None, whole: bool = False,
                   validate: Callable[[Path], object] | None = None,
                   magic_offset: int = 0, new_version: bool = False) -> StoredFile:
        """Stream ``chunks`` into ``relpath`` atomically, verifying what was promised.

        ``expected_size`` (Content-Length) must match; more than ``max_size`` bytes (or
        than ``expected_size``) stops the stream at once, so an endless body cannot fill
        the disk; ``magic`` checks the first bytes; ``whole`` checks that a JPEG or PNG
        ends as one does (a body cut short under a short Content-Length has the right
        size); ``validate`` sees the complete temp file and raises to refuse it. Nothing
        is published unless every check passes. ``magic_offset``: where ``magic`` sits
        (DICOM: 128). ``new_version``: when a different file is already at ``relpath``
        (the archive replaced it), publish beside it at :func:`versioned_relpath` instead
        of refusing; the returned :class:`StoredFile` names where it went.
        """
        final = self._write_path(relpath)
        folder = final.parent
        if expected_size is not None:
            self._check_space(folder, expected_size)
            max_size = expected_size if max_size is None else min(max_size, expected_size)
        tmp = folder / self._temp_name()
        try:
            digest, size = self._write_temp(tmp, chunks, magic, max_size, whole, magic_offset)
            if expected_size is not None and size != expected_size:
                raise IntegrityError(f"{relpath}: received {size} bytes, expected "
                                     f"{expected_size} (Content-Length)")
            if validate is not None:
                validate(tmp)
            if new_version and _regular_file(final) and _sha256_file(final) != digest:
                relpath = versioned_relpath(relpath, digest)
                final = self.path(relpath)
            self._publish(tmp, final, digest)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(_disk_full(folder)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return StoredFile(relpath, digest, size)

    def put_bytes(self, relpath: str, data: bytes, **kwargs) -> StoredFile:
        return self.put_stream(relpath, [data], expected_size=len(data), **kwargs)

    def put_json(self, kind: str, object_id: str, doc: object,
                 shard: str | None = None, keep_text: bool = False) -> StoredFile:
        """Store one version of a document; idempotent (an equal version is not rewritten).

        A document is small, immutable and named by its own hash, so it is written in one
        ``O_EXCL`` create of its final name (no temp, link, unlink, chmod or journal line:
        a whole-catalog sync stores a million of them). A file already there counts only
        if its content hashes to the name's digest; anything else (a file cut short by a
        kill, a damaged or planted one) is replaced atomically by the right bytes."""
        payload = canonical_json(doc)
        digest = hashlib.sha256(payload).hexdigest()
        relpath = doc_relpath(kind, object_id, digest, shard=shard)
        self._put_document(relpath, payload, digest)
        return StoredFile(relpath, digest, len(payload),
                          payload.decode("utf-8") if keep_text else None)

    def _put_document(self, relpath: str, payload: bytes, digest: str) -> None:
        folder, _, name = relpath.rpartition("/")
        folder = self._checked_folder(folder)
        final = f"{folder}/{name}"
        data = _compressor().compress(payload)
        try:
            try:
                fd = os.open(final, _CREATE_FINAL, 0o444)
            except FileExistsError:
                if not self._holds(final, digest):
                    self._replace_document(folder, final, data)
                return
            try:
                self._write_final(fd, final, data)
            except BaseException:
                os.unlink(final)  # ours (O_EXCL): nothing partial stays behind
                raise
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(_disk_full(Path(folder))) from None
            raise
        with self._lock:
            self._touched_dirs.add(folder)
            if self.batch_durability:
                self._unsynced.append(final)

    def _write_final(self, fd: int, final: str, data: bytes) -> None:
        """Write a document's bytes into its freshly created final file (fsynced unless
        durability is batched); a partial write is continued, never silently short."""
        _write_all(fd, data)
        if not self.batch_durability:
            os.fsync(fd)

    def _checked_folder(self, folder: str) -> str:
        """The absolute shard folder of ``store/<shard>``, made if missing and checked to
        be a real folder (not a link) once per store object rather than once per file:
        documents are created with ``O_NOFOLLOW | O_EXCL``, which never follows or
        replaces a link at the file's own name."""
        known = self._folders.get(folder)
        if known is not None:
            return known
        path = self.path(f"{folder}/x")  # refuses a linked shard folder, a bad shard
        self._ensure_dir(path.parent)
        _refuse_link(path.parent)
        self._folders[folder] = str(path.parent)
        return self._folders[folder]

    @staticmethod
    def _holds(final: str, digest: str) -> bool:
        """Whether the document file at ``final`` is whole and hashes to ``digest``."""
        try:
            fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _refuse_link(Path(final))
            raise
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return False
            data = fh.read()
        try:
            payload = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError:
            return False
        return hashlib.sha256(payload).hexdigest() == digest

    def _replace_document(self, folder: str, final: str, data: bytes) -> None:
        """Put the right bytes at a document's name over a wrong file (cut short by a
        killed writer, damaged, planted): a temp and ``rename``, so readers see one or the
        other whole."""
        tmp = f"{folder}/{self._temp_name()}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o444)
        try:
            try:
                self._write_final(fd, tmp, data)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        with self._lock:
            self._touched_dirs.add(folder)
            if self.batch_durability:
                self._unsynced.append(final)

    def _write_temp(self, tmp: Path, chunks: Iterable[bytes],
                    magic: bytes | tuple[bytes, ...] | None, max_size: int | None = None,
                    whole: bool = False, magic_offset: int = 0) -> tuple[str, int]:
        hasher, size, head, tail = hashlib.sha256(), 0, b"", b""
        need = magic_offset + 16  # the head kept: magic (at its offset) and end checks
        checked = magic is None
        fd = os.open(tmp, _CREATE_FINAL, 0o444)  # read-only once published; this fd writes
        try:
            for chunk in chunks:
                if len(head) < need:
                    head = (head + chunk)[:need]
                if not checked and len(head) >= need:
                    _check_magic(head[magic_offset:], magic)  # refuse an HTML page at once
                    checked = True
                if max_size is not None and size + len(chunk) > max_size:
                    raise IntegrityError(f"body larger than {max_size} bytes (declared "
                                         "length or size limit); refusing the rest")
                tail = (tail + chunk[-JPEG_TAIL:])[-JPEG_TAIL:]
                hasher.update(chunk)
                _write_all(fd, chunk)
                size += len(chunk)
            if size == 0 and magic is not None:
                raise IntegrityError("received an empty body")
            if not checked:
                _check_magic(head[magic_offset:], magic)  # a body shorter than ``need``
            if whole:
                _check_whole(head, tail)
            if not self.batch_durability:
                os.fsync(fd)
        finally:
            os.close(fd)
        if _UMASK & 0o444:
            os.chmod(tmp, 0o444)  # the umask took read bits from the create: put them back
        return hasher.hexdigest(), size

    def keep_journal(self, path: Path) -> None:
        """Record ``relpath<TAB>sha256`` of every file this store publishes in ``path``,
        *before* the file appears: a sync killed after a file appeared but before the index
        named it adopts the file only when the journal (or the index) knows its hash. A
        file someone planted at a final path is never adopted (:meth:`journaled`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._close_journal()
        self.journal = path

    def journaled(self) -> dict[str, str]:
        """``{relpath: sha256}`` the journal recorded (empty when there is none)."""
        if self.journal is None:
            return {}
        try:
            text = self.journal.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        pairs = (line.split("\t") for line in text.splitlines())
        return {p[0]: p[1] for p in pairs if len(p) == 2 and len(p[1]) == 64}

    def clear_journal(self) -> None:
        """Forget the journal once the index names everything it recorded."""
        if self.journal is not None:
            self._close_journal()
            self.journal.unlink(missing_ok=True)

    def _close_journal(self) -> None:
        with self._lock:
            fd, self._journal_fd = self._journal_fd, None
        if fd is not None:
            os.close(fd)

    def _note(self, final: Path, digest: str) -> None:
        if self.journal is None:
            return
        line = f"{final.relative_to(self.base).as_posix()}\t{digest}\n".encode()
        fd = self._journal_fd
        if fd is None:
            with self._lock:
                if self._journal_fd is None:  # opened once per run, not once per file
                    self._journal_fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND |
                                               os.O_CREAT | os.O_CLOEXEC, 0o600)
                fd = self._journal_fd
        # One small O_APPEND write: whole or absent after a kill, never interleaved with
        # another thread's, so no lock is held across it (a lock held while the writer
        # waits to get the GIL back queued every other worker behind it).
        os.write(fd, line)

    def _publish(self, tmp: Path, final: Path, digest: str) -> None:
        self._note(final, digest)
        try:
            os.link(tmp, final)
        except FileExistsError:
            _refuse_link(final)  # never hash (or trust) what a link at the name leads to
            existing = _sha256_file(final)
            if existing != digest:
                raise IntegrityError(
                    f"{final.name} already exists with different content "
                    f"(sha256 {existing[:12]}…, new {digest[:12]}…); run 'mirror verify'"
                ) from None
        with self._lock:
            self._touched.add(final.parent)
            if self.batch_durability:
                self._unsynced.append(final)

    def flush(self) -> list[str]:
        """Make everything published since the last flush durable: file contents (batch
        mode), then every touched shard folder's entries (one fsync per folder)."""
        with self._lock:
            touched = sorted(self._touched | {Path(f) for f in self._touched_dirs})
            self._touched, self._touched_dirs = set(), set()
            unsynced, self._unsynced = self._unsynced, []
        if unsynced:
            _sync_files(self.base, unsynced)
        for folder in touched:
            fsync_dir(folder)
        return [str(f) for f in touched]

    def check_file(self, relpath: str, magic: bytes | tuple[bytes, ...] | None = None,
                   whole: bool = False, magic_offset: int = 0) -> None:
        """Re-check a published file as :meth:`put_stream` checked it when it arrived."""
        path = self.path(relpath)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(magic_offset + 16)
            handle.seek(max(0, size - JPEG_TAIL))
            tail = handle.read()
        if magic is not None:
            _check_magic(head[magic_offset:], magic)
        if whole:
            _check_whole(head, tail)

    def _ensure_dir(self, folder: Path) -> None:
        if not folder.is_dir():
            shared_mkdir(folder, self.layout.root)  # 2775, like every folder of the mirror
            fsync_dir(folder.parent)

    def _check_space(self, folder: Path, needed: int) -> None:
        """Refuse a file the disk has no room for, before its first byte is written. The
        free space is read at most every :data:`SPACE_RECHECK` seconds (a ``statvfs`` per
        file cost a small-file sync one system call each) and what files take meanwhile is
        counted off it; a full disk still stops the write itself (``ENOSPC``)."""
        now = time.monotonic()
        with self._space_lock:
            checked_at, left = self._space
            if now - checked_at < SPACE_RECHECK and needed <= left:
                self._space = (checked_at, left - needed)
                return
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise DiskFullError(f"disk full under {folder}: {needed} bytes needed, {free} free; "
                                "free space, then run 'mirror sync' again")
        with self._space_lock:
            self._space = (now, free - needed)

    # -- reading -------------------------------------------------------------------------

    def open(self, relpath: str) -> BinaryIO:
        return open(self.path(relpath), "rb")

    def read_bytes(self, relpath: str) -> bytes:
        return self.path(relpath).read_bytes()

    def read_json(self, relpath: str) -> dict:
        """Decompress (the zstd frame checksum is verified) and parse a document."""
        try:
            payload = zstandard.ZstdDecompressor().decompress(self.read_bytes(relpath))
            return json.loads(payload)
        except (zstandard.ZstdError, ValueError) as exc:
            raise IntegrityError(f"{relpath} is damaged ({exc}); run 'mirror verify --repair'"
                                 ) from None

    def hash(self, relpath: str) -> tuple[str, int]:
        """SHA-256 and size of the payload (decompressed for documents), streaming."""
        if relpath.endswith(".zst"):
            # Whole-frame decompression: a stream reader returns the payload of a frame
            # cut short after its data and never checks the missing checksum.
            # (Documents are small.)
            try:
                payload = zstandard.ZstdDecompressor().decompress(self.read_bytes(relpath))
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{relpath} is damaged ({exc})") from None
            return hashlib.sha256(payload).hexdigest(), len(payload)
        hasher, size = hashlib.sha256(), 0
        with self.open(relpath) as stream:
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        return hasher.hexdigest(), size

    def iter_files(self) -> Iterator[str]:
        """Relative paths of every published file (temp files excluded), sorted."""
        for shard in SHARDS:
            folder = self.layout.store / shard
            _refuse_link(folder)
            if folder.is_dir():
                for name in sorted(os.listdir(folder)):
                    if not name.startswith(TEMP_PREFIX):
                        yield f"store/{shard}/{name}"

    # -- maintenance (writer lease holders only) --------------------------------------------

    def temp_files(self) -> list[Path]:
        found = []
        for shard in SHARDS:
            folder = self.layout.store / shard
            _refuse_link(folder)
            if folder.is_dir():
                found += [folder / n for n in sorted(os.listdir(folder))
                          if n.startswith(TEMP_PREFIX)]
        return found

    def clean_temp(self, max_age: float = 3600.0) -> list[Path]:
        """Remove temp files left by killed writers (call under the writer lease).

        A temp file names its writer's pid (``.tmp-<token><n>.<pid>``): one whose process is
        gone on this host goes at once; others (another host's pid, an unreadable name)
        once older than ``max_age`` seconds."""
        from mirror.temps import pid_alive

        cutoff = time.time() - max_age
        removed = []
        for path in self.temp_files():
            pid = path.name.rsplit(".", 1)[-1]
            dead = pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))
            try:
                if dead or path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    def remove(self, relpath: str) -> None:
        """Delete a published file (``mirror gc`` and repair only)."""
        self.path(relpath).unlink(missing_ok=True)
        with self._lock:
            self._touched.add(self.path(relpath).parent)


_CREATE_FINAL = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
SPACE_RECHECK = 1.0
"""Seconds a free-space reading stands for (:meth:`ObjectStore._check_space`)."""


def _process_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def _regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (not following a link at it)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """This thread's zstd compressor (one context reused: making one per document costs
    more than compressing it; a compressor must not be shared between threads)."""
    found = getattr(_local, "zstd", None)
    if found is None:
        found = _local.zstd = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return found


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (unbuffered: the chunks are large, and a buffered file
    object costs three system calls to open and a copy of every small chunk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _refuse_link(path: Path) -> None:
    """:class:`SymlinkError` if ``path`` is a symbolic link: sync, gc, export and repair
    never follow one out of the store (a shard folder linked elsewhere would have gc delete,
    or sync write, files outside the mirror root)."""
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return
    if is_link:
        raise SymlinkError(f"refusing to follow the symbolic link {path} (a shard folder or "
                           "file of the store must be real, not lead elsewhere); replace it "
                           "with a real folder or file, then run 'mirror verify'")


def _disk_full(folder: Path) -> str:
    return (f"disk full under {folder} (no space left on device); nothing partial was "
            "kept: free space, then run 'mirror sync' again to resume")


def _check_magic(first: bytes, magic: bytes | tuple[bytes, ...]) -> None:
    magics = (magic,) if isinstance(magic, bytes) else magic
    if not any(first.startswith(m) for m in magics):
        looks = "HTML" if first.lstrip()[:1] == b"<" else "unexpected"
        raise IntegrityError(f"expected a file starting {magics[0]!r} but got {looks} bytes "
                             f"{first[:16]!r}")


def _check_whole(head: bytes, tail: bytes) -> None:
    """A PNG ends with its IEND chunk, a JPEG with an end-of-image marker near its end."""
    if head.startswith(b"\x89PNG") and not tail.endswith(PNG_IEND):
        raise IntegrityError("the PNG is incomplete (it does not end with IEND)")
    if head.startswith(b"\xff\xd8\xff") and JPEG_EOI not in tail:
        raise IntegrityError("the JPEG is incomplete (no end-of-image marker at its end)")


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _sync_files(base: Path, paths: list[Path | str]) -> None:
    """Flush file contents: one ``syncfs`` of the store's file system where Linux has it,
    else an fsync per file."""
    if _syncfs(base):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed meanwhile (gc, repair): nothing to make durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(base: Path) -> bool:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(base, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new or renamed files) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


