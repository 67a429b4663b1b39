"""A real control plane (`custos server --dev`) and real agent processes (`custos agent run`).

Short intervals everywhere (lease TTL 3 s, heartbeat 0.5 s, full scan 1 s) so the
fleet tests see fail-closed, reconnects and reports quickly.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from custos.client.localagent import LocalClient
from custos.v1 import custody_pb2, custody_pb2_grpc, keys_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.servers.custos import CUSTOS, DevServer

LEASE_TTL = 3
KiB = 1 << 10


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (grpc.RpcError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def make_weights(root: Path, seed: int) -> Path:
    """A small artifact of weight-like files (every file counts for matching)."""
    rng = random.Random(seed)
    (root / "shards").mkdir(parents=True)
    (root / "model-00001.safetensors").write_bytes(rng.randbytes(256 * KiB))
    (root / "shards" / "model-00002.safetensors").write_bytes(rng.randbytes(128 * KiB))
    (root / "tokenizer.bin").write_bytes(rng.randbytes(8 * KiB))
    return root


class Api:
    """gRPC stubs as the dev security team."""

    def __init__(self, server: DevServer, role: str = "security-team") -> None:
        env = server.env
        cert_dir = Path(env["CUSTOS_CERT_DIR"])
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(env["CUSTOS_CA"]).read_bytes(),
            private_key=(cert_dir / f"{role}.key").read_bytes(),
            certificate_chain=(cert_dir / f"{role}.pem").read_bytes())
        self.channel = grpc.secure_channel(env["CUSTOS_ADDR"], creds)
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.custody = custody_pb2_grpc.CustodyStub(self.channel)
        self.alerts = custody_pb2_grpc.AlertsStub(self.channel)
        self.keys = keys_pb2_grpc.KeysStub(self.channel)

    def copies(self, model: str) -> list[Any]:
        return list(self.registry.ListCopies(registry_pb2.ListCopiesRequest(model=model), timeout=10).copies)

    def hosts(self) -> dict[str, Any]:
        return {h.name: h for h in self.custody.ListHosts(custody_pb2.ListHostsRequest(), timeout=10).hosts}

    def close(self) -> None:
        self.channel.close()


class AgentProc:
    """One `custos agent run` process with its own scan root, state dir, socket and config file."""

    def __init__(self, base: Path, name: str, server: DevServer, *, dev: bool = False,
                 scan_extra: str = "", extra_roots: tuple[str, ...] = ()) -> None:
        self.base = base
        self.name = name
        self.server = server
        self.dev = dev
        self.root = base / "root"
        self.root.mkdir(parents=True)
        self.state_dir = base / "state"
        self.socket = base / "run" / "agent.sock"
        self.plaintext = base / "plaintext"
        self.config = base / "agent.toml"
        self.log_path = base / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        roots = json.dumps([str(self.root), *extra_roots])
        cp = "" if dev else f"""
[control_plane]
addr = "{server.env['CUSTOS_ADDR']}"
enroll_addr = "{server.env['CUSTOS_ENROLL_ADDR']}"
ca_file = "{server.env['CUSTOS_CA']}"
"""
        self.config.write_text(f"""
name = "{name}"
state_dir = "{self.state_dir}"
socket = "{self.socket}"
{cp}
[scan]
roots = {roots}
interval = 1
process_interval = 0.5
min_size = 0
{scan_extra}

[lease]
heartbeat_interval = 0.5
reconnect_max = 1.5

[workloads]
stop_grace = 1
{"" if dev else f'plaintext_dir = "{self.plaintext}"'}
""")

    def env(self) -> dict[str, str]:
        env = self.server.client_env()
        env["CUSTOS_AGENT_SOCKET"] = str(self.socket)
        return env

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CUSTOS, *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def enroll(self) -> None:
        """`custos host add` (the security team) then `custos agent enroll` (the host)."""
        res = self.cli("host", "add", self.name, "-o", "json")
        assert res.returncode == 0, res.stderr
        token = json.loads(res.stdout)["enrollment_token"]
        res = self.cli("agent", "enroll", "--enroll-addr", self.server.env["CUSTOS_ENROLL_ADDR"],
                       "--name", self.name, "--token", token, "--state-dir", str(self.state_dir))
        assert res.returncode == 0, res.stderr
        key = self.state_dir / "identity" / "agent.key"
        assert key.stat().st_mode & 0o777 == 0o600

    def start(self) -> AgentProc:
        if self.dev:
            args = ["agent", "run", "--dev", "--data-dir", str(self.server.data_dir), "--config", str(self.config)]
        else:
            args = ["agent", "run", "--config", str(self.config)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*CUSTOS, *args], env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        wait_until(lambda: self.socket.exists() or self.proc.poll() is not None, 30,  # type: ignore[union-attr]
                   f"agent {self.name} to open its socket")
        assert self.proc.poll() is None, f"agent {self.name} exited:\n{self.log()}"
        return self

    def status(self) -> dict[str, Any]:
        return LocalClient(self.socket, timeout=10).status()

    def lease_live(self) -> bool:
        s = self.status()
        return s["lease"]["state"] == "live" and s["failed_closed"] is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.cli("run", *args, timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def server_config(path: Path) -> Path:
    path.write_text(f"[custody]\nlease_ttl = {LEASE_TTL}\nsweep_interval = 0.5\n")
    return path


def unique(prefix: str) -> str:
    # Host names also name /dev/shm/custos-agent-NAME: unique per run, so parallel runs never share one.
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def api_factory() -> Iterator[Callable[[DevServer], Api]]:
    made: list[Api] = []

    def make(server: DevServer) -> Api:
        a = Api(server)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()
