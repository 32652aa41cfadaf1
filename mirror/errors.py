"""Exceptions users see. Every message is one line naming the problem and the fix."""

from __future__ import annotations


class MirrorError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero."""

    exit_code = 2


class NotAMirrorError(MirrorError):
    """The root has no ``mirror.json``."""


class MirrorModeError(MirrorError):
    """An operation would silently mix incompatible mirrors (e.g. anonymous vs authenticated)."""


class UnsafeNameError(MirrorError):
    """A name from the archive would escape the mirror root or is otherwise unusable."""


class IntegrityError(MirrorError):
    """Bytes did not match what was promised (size, hash, magic bytes, JSON id)."""


class DiskFullError(MirrorError):
    """The disk (or quota) is full: the run stops; the next one resumes."""


class WriterBusyError(MirrorError):
    """Another process holds the writer lease."""


class ReadOnlyMirrorError(MirrorError):
    """The mirror root cannot be written here (a read-only mount, no group permission):
    reading commands work, writing ones cannot take the lease."""


class DamagedStateError(MirrorError):
    """Local state (the index's CURRENT, a generation, the writer's working database) is
    not what the mirror wrote; the message names the file and the command that rebuilds it."""


class ArchiveError(MirrorError):
    """The archive answered with an error the client cannot recover from."""


class OfflineError(MirrorError):
    """A network request was attempted while offline mode is on."""


class MissingObjectError(MirrorError, KeyError):
    """An object or blob the caller asked for is not in the mirror."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownSourceError(MirrorError):
    """No registered source fits the name or URL given."""


class AuthenticationError(MirrorError):
    """Login failed; the message never contains the password."""


class LoginLostError(AuthenticationError):
    """The archive answered an authenticated request anonymously (an expired or ignored
    login): its listings may lack private objects, so nothing is marked removed."""


class IndexFenceError(MirrorError):
    """Another writer published a generation while this one worked; nothing was published."""


class RemovalGuardError(MirrorError):
    """A listing would mark more of the mirror removed than the guard allows."""


class DecodeBombError(ValueError):
    """An image file whose declared dimensions exceed what its object says or the decode
    cap (``MIRROR_MAX_DECODE_PIXELS``): refused before any pixel is allocated."""


class SuperpixelError(ValueError):
    """A superpixel PNG or npz that cannot be a valid label image (a ValueError, so
    decoders' callers that catch bad input keep working)."""


class TransientHTTPError(Exception):
    """A response worth retrying (5xx, 429); carries Retry-After when sent. Internal to
    the retry loop: users see the error of the last attempt."""

    def __init__(self, status: int, url: str, retry_after: float | None):
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.retry_after = retry_after


class TransferError(Exception):
    """A download that failed below HTTP in a client other than requests (a reset, a
    timeout, a body cut short: obstore's direct downloads); retried like requests' own
    connection errors. Internal to the retry loop, as :class:`TransientHTTPError` is."""


class SettingError(MirrorError):
    """A setting (an environment variable) holds a value the tool cannot use."""


class ResponseTooLargeError(ArchiveError):
    """A response body read into memory grew past its cap (a decompression bomb, an endless
    stream, or a listing far larger than any the archive sends)."""


class DeadlineExceededError(ArchiveError):
    """A request (connect, headers and body) did not finish within its deadline."""


class JsonTooDeepError(ArchiveError):
    """A JSON body is nested deeper than any document the archive sends."""


class ExportDestError(MirrorError):
    """An export would mix with what its destination already holds."""


class BadUrlError(MirrorError):
    """A URL given on the command line cannot be used as it is (no scheme, a credential)."""


class SymlinkError(UnsafeNameError):
    """A symbolic link where the store expects a real shard folder or file: never followed,
    since it could lead outside the mirror root."""


class DicomError(IntegrityError):
    """Bytes that should be a DICOM Part 10 file are not (no ``DICM`` at byte 128, unreadable)."""


class SeriesZipError(IntegrityError):
    """A series zip (NBIA ``getImage``) is truncated, too large, or disagrees with its MD5 list."""


class UnsafeZipEntryError(SeriesZipError, UnsafeNameError):
    """A zip entry's name or type would write outside the folder it is unpacked into."""


class ScopeError(MirrorError):
    """A scope (criteria or SQL over a catalog) that cannot be run: names the fix."""


class CatalogError(MirrorError):
    """A catalog (idc-index-data Parquet files) is missing, unreadable or lacks a column."""


class ListingError(ArchiveError):
    """A bucket listing broke its bounds: too many keys, a loop, or a foreign prefix."""


class SandboxError(MirrorError):
    """A local sandbox service (SeaweedFS, the emulated APIs) could not start or stop."""


class ObjectMissingError(ArchiveError):
    """An object the catalog or a listing promised is not in the bucket (404)."""


class InvalidRecordError(ArchiveError):
    """One record from the archive is malformed or unsafe (bad id, wrong types, foreign URL):
    it is skipped and reported; the rest of the listing is kept."""


class QueryError(MirrorError):
    """A malformed criterion: names the criterion and how to write it."""


class NoProjectionError(MirrorError):
    """The published index has no Parquet projection to select from."""


class ReadOnlySqlError(MirrorError):
    """``mirror sql`` was given something other than one read-only statement."""


class UnmatchableCriterionError(QueryError):
    """With ``--strict`` (``strict=True``): a criterion that can never match as meant (a
    field no object has, a value of a type the field never holds)."""


class MirrorWarning(UserWarning):
    """Something users should know that is not an error (the CLI prints ``warning: ...``)."""


class CriterionWarning(MirrorWarning):
    """A criterion can never match as meant: it names the closest field or the field's
    types. ``strict=True`` (``--strict``) raises :class:`UnmatchableCriterionError` instead."""


class PrivateMirrorError(MirrorError):
    """``mirror serve`` would show non-public objects without a token guarding them."""
