"""Start and stop a real SeaweedFS (``weed mini``) on loopback for tests and benchmarks.

Plain Python, no pytest: the blob conformance tests, the benchmark and later the
end-to-end tests reuse it. Every listener ``weed mini`` opens (master, volume,
filer, S3 gateway, their gRPC ports, the admin server) is bound to 127.0.0.1 on
a port picked free here; WebDAV, the admin UI, the Iceberg/Lance endpoints, the
embedded IAM API and telemetry are switched off. Logs, option files and the data
live in one temporary directory that is removed on stop.

Three S3 identities are configured (``identities.json``):

* ``admin`` may do everything; only the launcher uses it, to create the bucket.
* ``custos`` gets ``Read``, ``Write`` and ``List`` on its one bucket and nothing
  else: it cannot create or delete buckets, nor touch another bucket.
* ``reader`` gets ``Read`` and ``List`` on that bucket only: what an agent holds to
  pull ciphertext and poll the order feed.

``weed`` puts its gRPC unix sockets at ``/tmp/seaweedfs-<service>-grpc-<port>.sock``
(no flag moves them, and they do not follow TMPDIR); :meth:`SeaweedFS.stop` removes
the ones named after this server's ports once the process has exited.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from tests.servers.ports import free_port

__all__ = ["S3Identity", "SeaweedFS", "SeaweedFSError", "start_seaweedfs", "weed_binary"]

_READY_TIMEOUT = 60.0
_STOP_GRACE = 5.0


class SeaweedFSError(RuntimeError):
    """The server could not be started (binary missing, early exit, not ready in time)."""


@dataclass(frozen=True)
class S3Identity:
    """One S3 identity from identities.json."""

    name: str
    access_key: str
    secret_key: str = field(repr=False)


def weed_binary() -> str | None:
    """Path of the ``weed`` binary on PATH, or None."""
    return shutil.which("weed")


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass(eq=False)  # hashed by identity, for the set of live servers
class SeaweedFS:
    """A running ``weed mini``; stop it with :meth:`stop` or use it as a context manager."""

    endpoint_url: str
    bucket: str
    admin: S3Identity
    custos: S3Identity
    base_dir: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes]
    startup_seconds: float
    _owns_dir: bool = True
    reader: S3Identity | None = None  # read and list only (an agent's credentials)

    @property
    def log_path(self) -> Path:
        return self.base_dir / "weed.log"

    def log_tail(self, n: int = 40) -> str:
        """The last n lines of the server's console log (for failure messages)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def client(self, identity: S3Identity | None = None, **config: Any) -> Any:
        """A raw boto3 S3 client for an identity (default: the custos identity)."""
        ident = identity or self.custos
        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": 5,
            "read_timeout": 60,
        }
        options.update(config)
        cfg = botocore.config.Config(**options)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ident.access_key,
            aws_secret_access_key=ident.secret_key,
            region_name="us-east-1",
            config=cfg,
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket as admin (the custos identity may not)."""
        self.client(self.admin).create_bucket(Bucket=name)

    def stop(self, *, grace: float = _STOP_GRACE, keep_dir: bool = False) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` s, remove the temp dir.

        Idempotent.
        """
        _live.discard(self)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._remove_stray_sockets()
        if self._owns_dir and not keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _remove_stray_sockets(self) -> None:
        # weed names its gRPC unix sockets after the gRPC port and does not always
        # remove them on exit; the process is gone, so sockets with our ports are ours.
        uid = os.getuid()
        for name, port in self.ports.items():
            if not name.endswith(".grpc"):
                continue
            service = name.split(".")[0]
            path = Path(tempfile.gettempdir()) / f"seaweedfs-{service}-grpc-{port}.sock"
            with contextlib.suppress(OSError):
                st = path.lstat()
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
                    path.unlink()

    def __enter__(self) -> SeaweedFS:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _identities(bucket: str) -> tuple[S3Identity, S3Identity, S3Identity, dict[str, object]]:
    admin = S3Identity("admin", "ADMIN" + secrets.token_hex(8).upper(), secrets.token_hex(20))
    custos = S3Identity("custos", "CUSTOS" + secrets.token_hex(7).upper(), secrets.token_hex(20))
    config: dict[str, object] = {
        "identities": [
            {
                "name": admin.name,
                "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": custos.name,
                "credentials": [{"accessKey": custos.access_key, "secretKey": custos.secret_key}],
                # Least privilege: object read/write/list in the one bucket. No Tagging
                # (Custos does not tag), no Admin (bucket create/delete, ACLs).
                "actions": [f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}"],
            },
        ]
    }
    reader = S3Identity("reader", "READER" + secrets.token_hex(7).upper(), secrets.token_hex(20))
    identities = config["identities"]
    assert isinstance(identities, list)
    identities.append({"name": reader.name, "credentials": [{"accessKey": reader.access_key,
                                                             "secretKey": reader.secret_key}],
                       "actions": [f"Read:{bucket}", f"List:{bucket}"]})
    return admin, custos, reader, config


def start_seaweedfs(
    *,
    bucket: str = "custos-blobs",
    base_dir: str | os.PathLike[str] | None = None,
    binary: str | None = None,
    timeout: float = _READY_TIMEOUT,
    attempts: int = 3,
) -> SeaweedFS:
    """Start ``weed mini`` on free loopback ports and return once S3 really works.

    Ready means: the admin identity created ``bucket`` and the custos identity
    wrote and deleted a probe object in it. A port taken by someone else between
    picking and binding it makes ``weed`` exit; that is retried with new ports
    (``attempts`` times). The server is also stopped at interpreter exit if the
    caller never stops it.

    Raises:
        SeaweedFSError: the binary is missing, the process exited, or it was not
            ready within ``timeout`` seconds (the message carries the log tail).
    """
    weed = binary or weed_binary()
    if weed is None:
        raise SeaweedFSError("the SeaweedFS binary 'weed' is not on PATH")
    owns_dir = base_dir is None
    root = Path(tempfile.mkdtemp(prefix="custos-seaweedfs-") if base_dir is None else base_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for attempt in range(1, attempts + 1):
        try:
            return _launch(weed, root, bucket, timeout, owns_dir)
        except _PortClash:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class _PortClash(SeaweedFSError):
    """weed exited because a chosen port was taken meanwhile."""


_PORT_CLASH_MARKERS = ("is not available", "address already in use")
_live: set[SeaweedFS] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        server.stop(grace=2.0)


def _launch(weed: str, root: Path, bucket: str, timeout: float, owns_dir: bool) -> SeaweedFS:
    # A fresh data dir each attempt: weed mini saves its options (ports included) there.
    for sub in ("data", "logs", "config", "tmp"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(mode=0o700)

    admin, custos, reader, ident_cfg = _identities(bucket)
    ident_path = root / "identities.json"
    fd = os.open(ident_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(ident_cfg, f)

    names = [
        "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
        "s3", "s3.grpc", "admin", "admin.grpc",
    ]  # fmt: skip
    ports = dict(zip(names, _distinct_free_ports(len(names)), strict=True))
    args = [
        weed,
        f"-logdir={root / 'logs'}",
        # An empty config dir, so no filer.toml / security.toml of the machine is read.
        f"-config_dir={root / 'config'}",
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={ident_path}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        # The admin server listens even with its UI off, so it gets loopback ports too.
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin.grpc']}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.iam=false",
        "-s3.autoCreateBucket=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        f"-filer.localSocket={root / 'tmp' / 'filer.sock'}",
        f"-s3.localSocket={root / 'tmp' / 's3.sock'}",
    ]
    env = dict(os.environ)
    env["TMPDIR"] = str(root / "tmp")
    started = time.monotonic()
    log = open(root / "weed.log", "wb")  # the child process keeps writing to it
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
    finally:
        log.close()
    server = SeaweedFS(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        bucket=bucket,
        admin=admin,
        custos=custos,
        base_dir=root,
        ports=ports,
        process=proc,
        startup_seconds=0.0,
        _owns_dir=owns_dir,
        reader=reader,
    )
    _live.add(server)
    try:
        _wait_ready(server, started + timeout)
    except SeaweedFSError as exc:
        clash = server.process.poll() is not None and any(m in server.log_tail() for m in _PORT_CLASH_MARKERS)
        server.stop(grace=1.0, keep_dir=clash)
        if clash:
            raise _PortClash(str(exc)) from exc
        raise
    except BaseException:
        server.stop(grace=1.0)
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def _wait_ready(server: SeaweedFS, deadline: float) -> None:
    fast = {"connect_timeout": 1, "read_timeout": 5, "retries": {"max_attempts": 1}}
    admin = server.client(server.admin, **fast)
    custos = server.client(server.custos, **fast)
    step = "create bucket"
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SeaweedFSError(f"weed exited with status {server.process.returncode}:\n{server.log_tail()}")
        try:
            if step == "create bucket":
                try:
                    admin.create_bucket(Bucket=server.bucket)
                except botocore.exceptions.ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                step = "probe"
            custos.put_object(Bucket=server.bucket, Key=".ready-probe", Body=b"ok")
            custos.delete_object(Bucket=server.bucket, Key=".ready-probe")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last = exc
            time.sleep(0.05)
    raise SeaweedFSError(f"S3 not ready ({step}): {last}\n{server.log_tail()}")
