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


class QueryError(MirrorError):
    """A malformed criterion: names the criterion and how to write it."""


class NoProjectionError(MirrorError):
    """The published index has no Parquet projection to select from."""


class ReadOnlySqlError(MirrorError):
    """``mirror sql`` was given something other than one read-only statement."""
