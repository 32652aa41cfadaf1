"""mirror: a local, offline, verifiable copy of public medical-imaging archives.

Heavy modules (numpy, SQLAlchemy, Pillow) are imported lazily so that
``import mirror`` stays fast; see ``docs/performance.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Mirror", "__version__"]


def __getattr__(name: str):
    # Lazy attribute: the offline API pulls in SQLAlchemy and numpy.
    if name == "Mirror":
        from mirror.api import Mirror

        return Mirror
    raise AttributeError(f"module 'mirror' has no attribute {name!r}")
