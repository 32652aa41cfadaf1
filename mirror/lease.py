"""The writer lease: one writer per mirror, across processes and machines.

Two locks, taken in order:

1. a ``filelock.FileLock`` on a *local* path (the writer's state folder), which the
   kernel releases when its process dies: an instant, reliable answer between
   processes of one host;
2. a ``filelock.SoftFileLease`` marker in ``<ns>/locks/writer.lease`` on the mirror
   itself, refreshed by a heartbeat: it works where ``flock`` does not (many NFS and
   SMB mounts) and expires on its own when a holder on another machine dies.

``writer.json`` beside the marker says who holds it (host, pid, command, start).
Correctness never depends on the lease (writes are atomic and idempotent, and the
index publish is fenced); it only saves two writers from wasting bandwidth.
Readers take no lock.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

import filelock

from mirror.config import utc_now
from mirror.errors import DiskFullError, MirrorError, ReadOnlyMirrorError, WriterBusyError
from mirror.layout import Layout, shared_mkdir
from mirror.temps import owned_temp, pid_alive

LEASE_SECONDS = 120.0
HEARTBEAT_SECONDS = 30.0


def _lease_path(layout: Layout) -> Path:
    return layout.locks / "writer.lease"


def _holder_path(layout: Layout) -> Path:
    return layout.locks / "writer.json"


def lease_holder(layout: Layout) -> dict | None:
    """Who holds the lease, or None: ``{"host", "pid", "command", "started"}``."""
    if not _lease_path(layout).exists():
        return None
    try:
        return json.loads(_holder_path(layout).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"host": "?", "pid": 0, "command": "?", "started": "?"}


def break_lease(layout: Layout) -> bool:
    """Remove the lease marker (operator escape hatch for a holder known to be dead)."""
    existed = _lease_path(layout).exists()
    try:
        _lease_path(layout).unlink(missing_ok=True)
        _holder_path(layout).unlink(missing_ok=True)
    except OSError as exc:
        raise _not_writable(layout, "lock break", exc) from None
    return existed


def holder_is_stale(layout: Layout, holder: dict) -> str | None:
    """Why the lease ``holder`` is dead, or None while it may be alive.

    On this host the process is asked directly (a SIGKILLed writer leaves its lease behind);
    from another host the lease counts as dead once its heartbeat is older than
    ``LEASE_SECONDS`` (the next writer takes it over then anyway)."""
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and pid and not pid_alive(int(pid)):
        return f"process {pid} is gone"
    try:
        age = time.time() - _lease_path(layout).stat().st_mtime
    except OSError:
        return None
    if age > LEASE_SECONDS:
        return f"its heartbeat stopped {age:.0f} s ago"
    return None


def _not_writable(layout: Layout, command: str, exc: OSError) -> MirrorError:
    """The lease could not be written: a full disk is said so (it is not read-only)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"cannot take the writer lease for 'mirror {command}': the disk under "
            f"{layout.locks} is full ({reason}); free space, then run the command again")
    return ReadOnlyMirrorError(
        f"cannot take the writer lease for 'mirror {command}' under {layout.locks} "
        f"({reason}): the mirror is read-only here; reading commands (status, query, export, "
        "verify, snapshot export) work; write from a host and user that can write it (the "
        "mirror's group, see docs/operations.md)")


class WriterLease:
    """Context manager holding the writer lease of one mirror namespace.

    ``wait`` is how long to wait for another holder: 0 fails at once, None waits forever.
    """

    def __init__(self, layout: Layout, command: str, wait: float | None = 0.0):
        self.layout = layout
        self.command = command
        self.wait = wait
        state = layout.state_dir()
        state.mkdir(parents=True, exist_ok=True)
        self._local = filelock.FileLock(str(state / "writer.lock"))
        self._lease: filelock.SoftFileLease | None = None

    def __enter__(self) -> WriterLease:
        deadline = None if self.wait is None else time.monotonic() + self.wait
        self._acquire(self._local.acquire, deadline)
        try:
            try:
                shared_mkdir(self.layout.locks, self.layout.root)
                self._lease = filelock.SoftFileLease(
                    str(_lease_path(self.layout)), lease_duration=LEASE_SECONDS,
                    heartbeat_interval=HEARTBEAT_SECONDS, thread_local=False)
                self._acquire(self._lease.acquire, deadline, remote=True)
                self._write_holder()
            except OSError as exc:
                if self._lease is not None and self._lease.is_locked:
                    self._lease.release()
                raise _not_writable(self.layout, self.command, exc) from None
        except BaseException:
            self._local.release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            _holder_path(self.layout).unlink(missing_ok=True)
            if self._lease is not None:
                self._lease.release()
        finally:
            self._local.release()

    def _acquire(self, acquire, deadline: float | None, remote: bool = False) -> None:
        while True:
            try:
                acquire(timeout=0.2 if deadline is None else max(0.0, deadline - time.monotonic()))
                return
            except filelock.Timeout:
                if remote and self._break_if_dead_here():
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise WriterBusyError(self._busy_message()) from None

    def _break_if_dead_here(self) -> bool:
        """A holder on this host whose process is gone: its lease is stale, take it."""
        holder = lease_holder(self.layout)
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid") \
                and not pid_alive(int(holder["pid"])):
            break_lease(self.layout)
            return True
        return False

    def _busy_message(self) -> str:
        holder = lease_holder(self.layout)
        if holder is None:
            who = "another process on this machine"
        else:
            who = (f"pid {holder.get('pid')} on host {holder.get('host')} "
                   f"(mirror {holder.get('command')}) since {holder.get('started')}")
        return (f"{self.layout.root} is being written by {who}; wait for it (--wait SECONDS) "
                "or, if it is dead, run 'mirror lock break'")

    def _write_holder(self) -> None:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                "started": utc_now()}
        tmp = owned_temp(_holder_path(self.layout))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        os.chmod(tmp, 0o664)
        os.replace(tmp, _holder_path(self.layout))
