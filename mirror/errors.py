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


class IndexFenceError(MirrorError):
    """Another writer published a generation while this one worked; nothing was published."""


class RemovalGuardError(MirrorError):
    """A listing would mark more of the mirror removed than the guard allows."""


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


class InvalidRecordError(ArchiveError):
    """One record from the archive is malformed or unsafe (bad id, wrong types, foreign URL):
    it is skipped and reported; the rest of the listing is kept."""
