"""The metadata index: SQLAlchemy models and the published, read-only generations.

Tables here know no archive: documents (``objects`` and each source's typed tables),
their versions, files and their versions, listings, the sync plan and runs. A source's own
typed tables (ISIC v1's ``images``, ``datasets`` ...) live in its package and share
:data:`Base`'s metadata.
"""

from mirror.index.models import (
    Base,
    Blob,
    DocumentVersion,
    FileVersion,
    Listing,
    Meta,
    ObjectRow,
    SyncItem,
    SyncRun,
)

__all__ = [
    "Base", "Blob", "DocumentVersion", "FileVersion", "Listing", "Meta", "ObjectRow",
    "SyncItem", "SyncRun",
]
