"""A real control plane in-process, with the incidents runtime attached.

``Plane`` starts ``custos.controlplane.server.ControlPlane`` (dev mode: SQLite,
or etcd; local keys, or OpenBao Transit) on its own event loop in a thread,
attaches ``custos.controlplane.incidents.attach`` to it, and serves the
Incidents and Audit services on a second ``grpc.aio`` server behind the
production ``GuardInterceptor`` and its role table
(``custos.controlplane.authz.POLICY``). Tests are plain functions: they drive
the control plane's services with ``plane.run(coro)``, and the CLI handlers or
subprocesses talk to it over mTLS like any client.

The runtime's background loops are not started: tests run rounds with
``plane.round()`` and move the clock with ``plane.advance(hours)``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from custos.client.signerkeys import load_private_key
from custos.client.transfer import Pusher, PushState, pull_into
from custos.controlplane.api import AuditServicer
from custos.controlplane.audit import Caller
from custos.controlplane.config import ServerConfig
from custos.controlplane.guard import GuardInterceptor
from custos.controlplane.incidents.runtime import LEADER_KEY, IncidentsRuntime, attach
from custos.controlplane.server import ControlPlane, dev_env_lines, prepare_dev
from custos.controlplane.store.base import Txn
from custos.core.canonical import decode_canonical
from custos.core.hosts import cert_fingerprint
from custos.core.keymaterial import zeroize
from custos.core.orders import Order
from custos.core.signers import encode_signatures
from custos.fs.hashing import build_manifest
from custos.v1 import audit_pb2_grpc, custody_pb2, incidents_pb2_grpc
from tests.controlplane.access_helper import grant
from tests.servers.custos import parse_env_file

T = TypeVar("T")
HOUR = 3600 * 1_000_000_000
SEC = Caller(principal="alice", role="security-team", host="10.0.0.2", request_id="t")
EXEC = Caller(principal="exec", role="executive", host="10.0.0.3", request_id="t")


class Plane:
    def __init__(self, tmp: Path, *, store_url: str | None = None, keys: dict[str, Any] | None = None,
                 rules: dict[str, Any] | None = None, notify: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, lease_ttl: float = 30.0) -> None:
        self.tmp = tmp
        self.store_url = store_url
        self.keys = keys
        self.rules = rules or {}
        self.notify = notify if notify is not None else {"log": False}
        self.metrics = metrics or {}
        self.lease_ttl = lease_ttl
        self.offset_ns = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.cp: ControlPlane
        self._granted: set[tuple[str, str, tuple[str, str]]] = set()
        self.rt: IncidentsRuntime
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    def clock(self) -> int:
        return time.time_ns() + self.offset_ns

    def advance(self, hours: float) -> None:
        self.offset_ns += int(hours * HOUR)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Plane:
        self.thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        cfg = ServerConfig(dev=True, data_dir=self.tmp / "cp", listen="127.0.0.1:0", lease_ttl=self.lease_ttl,
                           sweep_interval=3600, checkpoint_interval=3600)
        prepare_dev(cfg)
        cfg.enroll_listen = ""
        if self.store_url:
            cfg.store_url = self.store_url
        if self.keys:
            cfg.keys = self.keys
        self.cfg = cfg
        self.cp = ControlPlane(cfg)
        await self.cp.start()
        # The control plane attached its own incidents runtime; these tests drive one
        # with an injected clock and config instead, so retire the built-in one.
        await self.cp.incidents.close()
        await asyncio.gather(*self.cp.incidents.tasks, return_exceptions=True)
        await self.cp.store.commit(Txn(deletes=[LEADER_KEY]))
        self.rt = await attach(store=self.cp.store, audit=self.cp.audit, stop=self.cp._stop,  # type: ignore[arg-type]
                               rules=self.rules, notify=self.notify, metrics=self.metrics, custody=self.cp.custody,
                               base_dir=self.tmp, clock=self.clock, start=False)
        if self.rt.metrics is not None:
            await self.rt.metrics.refresh()
            self.rt.metrics.start()
        self.server = grpc.aio.server(interceptors=[GuardInterceptor(self.cp.audit)])
        incidents_pb2_grpc.add_IncidentsServicer_to_server(self.rt.servicer, self.server)
        audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(self.cp.audit), self.server)
        assert cfg.tls_ca and cfg.tls_cert and cfg.tls_key
        creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
                                            root_certificates=cfg.tls_ca.read_bytes(), require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()

    def stop(self) -> None:
        async def down() -> None:
            if hasattr(self, "server"):
                await self.server.stop(0.5)
            if hasattr(self, "rt"):
                await self.rt.close()
            if hasattr(self, "cp") and hasattr(self.cp, "server"):
                await self.cp.stop(0.5)

        try:
            self.run(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # -- the control plane's parts -------------------------------------------------------

    @property
    def store(self) -> Any:
        return self.cp.store

    def round(self) -> list[dict[str, Any]]:
        return self.run(self.rt.round())

    def alerts(self, rule: str | None = None) -> list[dict[str, Any]]:
        out = [dict(decode_canonical(e.value)) for e in self.run(self.store.range("alerts/"))]
        return [a for a in out if rule is None or a["rule"] == rule]

    def incidents(self, **kw: Any) -> list[dict[str, Any]]:
        return self.run(self.rt.service.list_incidents(**kw))

    def events(self) -> list[Any]:
        return self.run(self.rt.service.events())

    def stored_events(self) -> list[bytes]:
        return [v for _, v in self.run(self.cp.audit.list_events(0, 100000))]

    def model(self, name: str, *, hosts: list[str] | None = None, paths: list[str] | None = None,
              drill: bool = False) -> None:
        self.run(self.cp.registry.register_model(SEC, name=name, owner="research", training_flops=3e26,
                                                 drill=drill))
        if hosts is not None:
            self.run(self.cp.registry.set_custody_policy(SEC, name=name, hosts=hosts, paths=paths or []))

    def push(self, model: str, root: Path, caller: Caller = SEC) -> str:
        """A real encrypted push through the key broker (what `custos push` does)."""

        manifest = build_manifest(root)
        out = self.run(self.cp.broker.create_data_key(caller, model=model, manifest_bytes=manifest.encode(),
                                                      parents=[]))
        key, aid = out["data_key"], out["artifact_id"]
        try:
            Pusher(blobs=self.cp.blobs, data_key=key, artifact_id=aid, manifest=manifest, root=root,
                   state=PushState(self.tmp / "push-state" / f"{aid}.json"), resumed=out["resumed"]).run()
        finally:
            zeroize(key)
        self.run(self.cp.broker.register_stored(caller, artifact_id=aid))
        return aid

    def pull(self, caller: Caller, aid: str, dest: Path, purpose: str = "pull") -> None:
        """A real verified pull (what an agent or `custos pull` does)."""

        self.grant_for(caller, aid)
        rec, key, _ = self.run(self.cp.broker.unwrap(caller, artifact=aid, purpose=purpose))
        try:
            assert rec.storage is not None
            pull_into(self.cp.blobs, data_key=key, artifact_id=aid, manifest=rec.manifest,
                      objects={o["path"]: o["key"] for o in rec.storage["objects"]}, dest=dest)
        finally:
            zeroize(key)

    def grant_for(self, caller: Caller, aid: str) -> None:
        """An access grant for ``caller`` on ``aid``'s model (the two-person rule), once."""
        model = self.run(self.cp.registry.get_artifact(aid)).model
        if self.run(self.cp.registry.get_model(model))["state"] != "active":
            return  # no grant is made for a halted model: the unwrap is refused as it would be
        who = ("hosts", caller.principal) if caller.role == "agent" else ("principal", caller.principal)
        if (model, aid, who) in self._granted:
            return
        self._granted.add((model, aid, who))
        kw = {"hosts": [caller.principal]} if caller.role == "agent" else {"principal": caller.principal}
        self.run(grant(self.cp.access, model, artifact=aid, **kw))  # type: ignore[arg-type]

    def unwrap(self, caller: Caller, aid: str) -> None:
        self.grant_for(caller, aid)
        _, key, _ = self.run(self.cp.broker.unwrap(caller, artifact=aid, purpose="run"))
        zeroize(key)

    def enroll(self, name: str, *, address: str = "10.0.9.9") -> Caller:
        """Add and enroll a host (real CSR, real certificate); give it a live lease."""
        _, token, _ = self.run(self.cp.custody.add_host(SEC, name=name, labels={}))
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .sign(key, hashes.SHA256()))
        cert, _ = self.run(self.cp.custody.enroll(peer=address, name=name, token=token,
                                                  csr_pem=csr.public_bytes(serialization.Encoding.PEM)))
        self.run(self.cp.custody.renew_lease(name))
        return Caller(principal=name, role="agent", host=address, request_id="t", cert_sha256=cert_fingerprint(cert))

    def report(self, host: str, files: dict[str, bytes], *, managed: list[str] | None = None) -> dict[str, int]:
        """An agent's full inventory: path -> content, hashed here like the scanner does."""
        inv = custody_pb2.Inventory(full=True, managed_roots=managed or [], files=[
            custody_pb2.FileRecord(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest(), form="plaintext")
            for p, b in files.items()])
        return self.run(self.cp.custody.ingest(host, inv))

    def declare_drills(self, *models: str) -> None:
        """Sign (4 dev executives, the rotate threshold) and install a drill register."""

        register = self.run(self.cp.orders.book.drills.prepare(add=list(models), remove=[]))
        keys = sorted((self.cfg.data_dir / "signers").glob("exec*.key"))[:4]  # type: ignore[operator]
        sigs = [register.sign(load_private_key(k, None)) for k in keys]
        self.run(self.cp.orders.set_drill_register(EXEC, body=register.encode(), signatures=encode_signatures(sigs)))

    def order(self, action: str, models: list[str], *, drill: bool = False, signers: int = 3) -> str:
        """Propose and sign to quorum with the dev executives; wait until its effects ran."""

        d = self.run(self.cp.orders.propose(EXEC, action=action, models=models, reason="test",
                                            expires_seconds=3600, drill=drill))
        order: Order = d["order"]
        keys = sorted((self.cfg.data_dir / "signers").glob("exec*.key"))[:signers]  # type: ignore[operator]
        sigs = [order.sign(load_private_key(k, None)) for k in keys]
        self.run(self.cp.orders.attach(EXEC, order_id=order.id, signatures=encode_signatures(sigs)))
        deadline = time.monotonic() + 30
        while not any(e.action == "ExecuteOrder" and e.object == f"order/{order.id}" for e in self.events()):
            assert time.monotonic() < deadline, "order effects did not run"
            time.sleep(0.02)
        return order.id

    def ack(self, host: str, order_id: str, outcome: str, wiped: list[str] | None = None) -> None:
        """The host's agent acks; then the completion check the control plane runs periodically."""
        self.run(self.cp.orders.record_ack(host, custody_pb2.OrderAck(
            order_id=order_id, verified=True, outcome=outcome, paths_wiped=wiped or [],
            received_unix_ns=time.time_ns(), done_unix_ns=time.time_ns())))
        self.run(self.cp.orders.check_complete(order_id))

    def connect(self, host: str) -> None:
        """The host's agent holds its custody stream (what the agent does while running)."""
        self.loop.call_soon_threadsafe(self.cp.custody.attach, host)
        self.run(asyncio.sleep(0))

    # -- clients -----------------------------------------------------------------------------

    def ns(self, role: str = "security-team", **kw: Any) -> argparse.Namespace:
        """What `custos ... --addr --ca --tls-cert --tls-key` parses to, for the CLI handlers."""
        d = self.cfg.data_dir
        assert d is not None
        tls = d / "tls"
        return argparse.Namespace(addr=f"127.0.0.1:{self.port}", ca=str(tls / "ca.pem"),
                                  tls_cert=str(tls / "clients" / f"{role}.pem"),
                                  tls_key=str(tls / "clients" / f"{role}.key"), role=role, timeout=30.0, **kw)

    def cli_env(self, role: str = "security-team") -> dict[str, str]:
        """Environment for a `custos` subprocess against the main control-plane port."""

        env_file = self.tmp / "dev.env"
        env_file.write_text("\n".join(dev_env_lines(self.cfg, self.cp.port)) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
        env.update(parse_env_file(env_file))
        env["CUSTOS_ROLE"] = role
        env["CUSTOS_STATE_DIR"] = str(self.tmp / "cli-state")
        return env


def weights(root: Path, seed: int, files: int = 2, size: int = 4096) -> Path:
    """A small weight directory (safetensors-named random files and a config)."""

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"model-{i + 1:05d}-of-{files:05d}.safetensors").write_bytes(rng.randbytes(size))
    (root / "config.json").write_text('{"layers": 2}')
    return root


def tree(root: Path, under: str) -> dict[str, bytes]:
    """The files of ``root`` as an agent would report them under the host path ``under``."""
    return {f"{under}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def plane_factory(tmp_path: Path) -> Iterator[Any]:
    """Start planes with the given options; each is stopped at the end of the test."""
    started: list[Plane] = []

    def make(**kw: Any) -> Plane:
        p = Plane(tmp_path / f"plane{len(started)}", **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def plane(plane_factory: Any) -> Plane:
    return plane_factory()  # type: ignore[no-any-return]
