"""The mirror root's marker file, ``mirror.json``.

It names the on-disk format version, the source (a name in the registry of
:mod:`mirror.sources.base`; one source per mirror root), its base URL, whether
the mirror was built with authentication (so anonymous and authenticated
mirrors are never mixed silently), and optionally an index database URL
(PostgreSQL for several writing hosts). It is written once, atomically, and
rewritten only when a setting changes. It never holds a credential.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from mirror.errors import BadUrlError, MirrorError, MirrorModeError, NotAMirrorError
from mirror.layout import FORMAT_VERSION, MARKER, Layout, shared_mkdir
from mirror.sources.base import ALIASES, source_for_url, spec_of
from mirror.temps import owned_temp


@dataclass
class MirrorConfig:
    """Settings of one mirror root, as stored in ``mirror.json``."""

    source: str = "isic-v1"
    base_url: str = ""
    authenticated: bool = False
    index_url: str | None = None
    id: str = ""  # random, set once at creation: tells this mirror from one made anew here
    format: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: utc_now())

    @property
    def layout_namespace(self) -> str:
        """The folder under the root that holds the source's store and index."""
        return spec_of(self.source).namespace


def utc_now() -> str:
    """Current UTC time as ISO-8601 with seconds precision (our own timestamps)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def load_config(root: Path) -> MirrorConfig:
    """Read ``<root>/mirror.json``; a clear error when the folder is not a mirror."""
    path = Path(root) / MARKER
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotAMirrorError(
            f"{root} is not a mirror (no {MARKER}); run 'mirror sync --root {root}' to create one"
        ) from None
    except (OSError, ValueError) as exc:
        raise NotAMirrorError(
            f"cannot read {path}: {exc}; {RESTORE_CONFIG}") from None
    problem = _config_problem(raw)
    if problem is not None:
        raise NotAMirrorError(f"{path} is damaged ({problem}); {RESTORE_CONFIG}")
    if raw.get("format", 0) > FORMAT_VERSION:
        raise MirrorModeError(
            f"{root} uses mirror format {raw['format']}, newer than this tool ({FORMAT_VERSION}); "
            "upgrade mirror"
        )
    known = MirrorConfig.__dataclass_fields__
    config = MirrorConfig(**{k: v for k, v in raw.items() if k in known})
    config.source = ALIASES.get(config.source, config.source)  # older releases wrote "isic"
    spec_of(config.source)  # an unknown source is a clear error here, not later
    return config


RESTORE_CONFIG = ("restore it from a backup or another copy of this mirror (it names the "
                  "source and the archive's URL); the store and index are untouched")
_CONFIG_TYPES = {"source": (str,), "base_url": (str,), "authenticated": (bool,),
                 "index_url": (str, type(None)), "id": (str,), "format": (int,),
                 "created": (str,)}


def _config_problem(raw: object) -> str | None:
    """What makes a parsed ``mirror.json`` unusable (a field of the wrong type), or None."""
    if not isinstance(raw, dict):
        return f"a JSON {type(raw).__name__}, not an object"
    for key, types in _CONFIG_TYPES.items():
        if key in raw and (not isinstance(raw[key], types)
                           or (key == "format" and isinstance(raw[key], bool))):
            return f"field {key!r} is {type(raw[key]).__name__}"
    return None


def save_config(root: Path, config: MirrorConfig) -> None:
    """Write ``mirror.json`` atomically (temp file, fsync, replace)."""
    root = Path(root)
    shared_mkdir(root, root)
    data = json.dumps(asdict(config), indent=2, sort_keys=True) + "\n"
    tmp = owned_temp(root / MARKER)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o664)
        os.replace(tmp, root / MARKER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_or_create(
    root: Path, base_url: str | None, authenticated: bool, allow_mixed: bool = False,
    index_url: str | None = None, source: str | None = None, rebase_url: bool = False,
) -> MirrorConfig:
    """Config of an existing mirror, checked against this run; or a new mirror's config.

    A new mirror's source is ``source`` or, without it, the one whose URL shape
    ``base_url`` has. A mirror made by an older release (``"source": "isic"``) is
    carried forward in place: the marker is rewritten with the source's current name.
    A different ``base_url`` for an existing mirror is refused unless ``rebase_url``
    says it is the same archive at a new address: a typo'd or wrong server would
    otherwise be remembered, and its listing could mark the whole mirror removed.
    """
    root = Path(root)
    if base_url:
        check_archive_url(base_url)
    if (root / MARKER).exists():
        config = load_config(root)
        if source and ALIASES.get(source, source) != config.source:
            raise MirrorModeError(f"{root} mirrors {config.source}, not {source}; one source "
                                  "per mirror root: choose another --root")
        if json.loads((root / MARKER).read_text(encoding="utf-8")).get("source") != \
                config.source:
            save_config(root, config)
        if index_url and index_url != config.index_url:
            raise MirrorModeError(
                f"{root} keeps its index in {config.index_url or 'index/ (SQLite)'}; "
                "--index-url can only be chosen when a mirror is created")
        if config.authenticated != authenticated and not allow_mixed:
            built = "with" if config.authenticated else "without"
            now = "with" if authenticated else "without"
            raise MirrorModeError(
                f"{root} was built {built} authentication but this run is {now}; "
                "use the same mode, or pass --allow-mixed to mix them knowingly"
            )
        if base_url and base_url.rstrip("/") != config.base_url:
            if not rebase_url:
                raise MirrorModeError(
                    f"{root} mirrors {config.base_url}, not {base_url.rstrip('/')}; if this "
                    "is the same archive at a new address, add --rebase-url; otherwise "
                    "choose another --root")
            config.base_url = base_url.rstrip("/")
            save_config(root, config)
        return config
    _refuse_foreign_folder(root)
    if index_url:
        _refuse_password_in_url(index_url)
    name, url = _new_source(base_url, source)
    config = MirrorConfig(source=name, base_url=url, authenticated=authenticated,
                          index_url=index_url, id=uuid.uuid4().hex)
    save_config(root, config)
    return config


def source_name(root: Path, base_url: str | None, source: str | None) -> str:
    """The source a sync of ``root`` talks to, found without writing anything: the
    mirror's own, or (for a new mirror) ``source`` or the one ``base_url``'s shape names."""
    if base_url:
        check_archive_url(base_url)
    if (Path(root) / MARKER).exists():
        return load_config(Path(root)).source
    return _new_source(base_url, source)[0]


def _new_source(base_url: str | None, source: str | None) -> tuple[str, str]:
    """The source name and base URL of a mirror being created."""
    if source:
        source = ALIASES.get(source, source)
        spec = spec_of(source)
        url = base_url or spec.default_url
        if not url:
            raise MirrorError(f"{spec.title} has no default URL; pass --url")
        return source, url.rstrip("/")
    if not base_url:
        raise MirrorError("a new mirror needs --url (the archive's API root) or --source NAME")
    return source_for_url(base_url.rstrip("/")), base_url.rstrip("/")


def check_archive_url(url: str) -> None:
    """Refuse an archive URL (``--url``) that is not ``http(s)://host/...`` or that holds a
    credential, before anything is written: the URL is stored in ``mirror.json``."""
    refuse_credentials_in_url(url)
    try:
        parts = urlsplit(url)
        has_host = bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a malformed port or IPv6 address
        parts, has_host = None, False
    if parts is None or parts.scheme.lower() not in ("http", "https") or not has_host:
        shown = url if len(url) <= 80 else url[:77] + "..."
        hint = "https://" + url.split("://", 1)[-1].lstrip("/")
        if len(hint) > 80:
            hint = hint[:77] + "..."
        raise BadUrlError(f"--url {shown!r} is not an http:// or https:// address; use e.g. "
                          f"--url {hint}")


def refuse_credentials_in_url(url: str) -> None:
    """A ``user:password@`` (or ``user@``) part in an archive URL is refused without echoing
    it: the URL would be written to ``mirror.json`` and appear in logs and errors."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        netloc = ""
    # urlsplit finds no netloc without a scheme ("user:pw@host/api"): look at the text too.
    head = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]
    if "@" in netloc or "@" in head:
        raise BadUrlError("--url must not contain a user name or password (it would be "
                          "stored in mirror.json and shown in logs); pass --username and set "
                          "MIRROR_PASSWORD instead")


def _refuse_password_in_url(url: str) -> None:
    # mirror.json is shared and plain text: a credential must never be written there.
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and others
        raise MirrorModeError(f"--index-url is not a database URL ({type(exc).__name__}); "
                              "use e.g. postgresql://user@host/dbname") from None
    if parsed.password:
        raise MirrorModeError("--index-url must not contain a password (it would be stored in "
                              "mirror.json); use PGPASSWORD or ~/.pgpass instead")


def _refuse_foreign_folder(root: Path) -> None:
    # Never turn a folder full of someone else's files into a mirror by accident.
    if root.exists() and any(p.name != ".DS_Store" for p in root.iterdir()):
        raise NotAMirrorError(
            f"{root} exists, is not empty and is not a mirror; choose an empty or new folder"
        )


def layout_for(root: Path, config: MirrorConfig) -> Layout:
    return Layout(Path(root), config.layout_namespace)
