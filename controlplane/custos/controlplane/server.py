"""`custos server`: the control plane process.

Starts the gRPC (grpc.aio) server with mTLS, health checking and reflection,
runs audit checkpoints, and shuts down gracefully on SIGTERM/SIGINT: health
turns NOT_SERVING, in-flight calls get a grace period, a last checkpoint is
signed, the store is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from custos.blobs.base import BlobStore
from custos.blobs.url import open_blob_store
from custos.controlplane.access import AccessService
from custos.controlplane.access_api import AccessServicer
from custos.controlplane.access_who import AccessWho
from custos.controlplane.admission import Admission
from custos.controlplane.api import (
    AlertsServicer,
    AuditServicer,
    CustodyServicer,
    EnrollmentServicer,
    KeysServicer,
    OrdersServicer,
    RegistryServicer,
)
from custos.controlplane.audit import AuditLog, CheckpointSigner, LocalCheckpointSigner, load_or_create_signing_key
from custos.controlplane.canaries import CanariesServicer, CanaryService
from custos.controlplane.config import ServerConfig
from custos.controlplane.custody import Custody
from custos.controlplane.guard import GuardInterceptor
from custos.controlplane.incidents import attach as attach_incidents
from custos.controlplane.keys.base import KeyProvider
from custos.controlplane.keys.broker import KeyBroker
from custos.controlplane.keys.health import KeyHealthCollector
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.keys.transit_signer import TransitCheckpointSigner, public_key_pem
from custos.controlplane.keys.vault import VaultTransitProvider
from custos.controlplane.keys.vault_auth import auth_from_config
from custos.controlplane.orders import OrdersService, bootstrap_dev_signers
from custos.controlplane.orders.feed import OrderFeedCollector
from custos.controlplane.orders.report_signer import DEV_REPORT_KEY_FILE, open_report_signer
from custos.controlplane.periodic import ShortPauses
from custos.controlplane.pki import CertificateAuthority, dev_approvers, ensure_dev_pki
from custos.controlplane.probes import ProbeServer, readiness_checks
from custos.controlplane.registry import Registry
from custos.controlplane.reminders import Reminders
from custos.controlplane.store import Store, open_store
from custos.core.audit_chain import CheckpointPolicy
from custos.core.signers import SignerSet
from custos.errors import CustosError, InvalidInput
from custos.fs.private import write_private
from custos.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    canaries_pb2,
    canaries_pb2_grpc,
    custody_pb2,
    custody_pb2_grpc,
    incidents_pb2,
    incidents_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = logging.getLogger("custos.server")

SERVICE_NAMES = (
    registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["Keys"].full_name,
    custody_pb2.DESCRIPTOR.services_by_name["Custody"].full_name,
    custody_pb2.DESCRIPTOR.services_by_name["Alerts"].full_name,
    orders_pb2.DESCRIPTOR.services_by_name["Orders"].full_name,
    incidents_pb2.DESCRIPTOR.services_by_name["Incidents"].full_name,
    access_pb2.DESCRIPTOR.services_by_name["Access"].full_name,
    canaries_pb2.DESCRIPTOR.services_by_name["Canaries"].full_name,
)

KEYS_SERVICE = keys_pb2.DESCRIPTOR.services_by_name["Keys"].full_name

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # An agent behind a cut link (packets dropped, no reset) is let go within 15 s: a
    # ping every 10 s, unanswered for 5 s, closes its connection, so its stream
    # detaches and the host counts as unreachable once its lease has lapsed.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Agents ping every 10 s (custos.agent.stream); allow half that, so jitter is no strike.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
    # A reconnect storm (every agent at once after a control-plane restart) must
    # queue, not be CANCELLED: the defaults drop a few percent of 2,000 streams.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
    ("grpc.max_concurrent_streams", 100_000),
]


def grpc_options(idle_connection_s: float) -> list[tuple[str, int]]:
    """GRPC_OPTIONS, and a connection that carries no call for ``idle_connection_s`` is closed
    (GOAWAY; a client's next call reconnects): a client that leaks connections (each refused
    attempt of a reconnect storm kept one open, on both ends, until its garbage collector ran)
    or holds them open on purpose costs this replica descriptors for that long, not forever."""
    return [*GRPC_OPTIONS, ("grpc.max_connection_idle_ms", int(idle_connection_s * 1000))]


def prepare_dev(cfg: ServerConfig) -> None:
    """Fill a config for `--dev`: dev PKI, SQLite store and audit key under data_dir."""
    if cfg.data_dir is None:
        raise InvalidInput("--dev needs --data-dir")
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = ensure_dev_pki(cfg.data_dir)
    cfg.tls_ca, cfg.tls_cert, cfg.tls_key = pki.ca_cert, pki.server_cert, pki.server_key
    cfg.store_url = cfg.store_url or f"sqlite://{cfg.data_dir / 'custos.db'}"
    cfg.audit_key = cfg.audit_key or cfg.data_dir / "audit-signing.key"
    cfg.report_key_file = cfg.report_key_file or cfg.data_dir / DEV_REPORT_KEY_FILE
    cfg.enroll_listen = cfg.enroll_listen or "127.0.0.1:0"
    cfg.ca_cert = cfg.ca_cert or pki.ca_cert
    cfg.ca_key = cfg.ca_key or pki.ca_key
    if not cfg.keys:
        cfg.keys = {"provider": "local", "path": str(cfg.data_dir / "dev-keys.json"), "dev_only": True}
    if not cfg.blobs:
        cfg.blobs = {"url": f"file://{(cfg.data_dir / 'blobs').resolve()}"}


def open_key_provider(keys: dict[str, Any]) -> KeyProvider:
    """Raises InvalidInput for an incomplete [keys] section."""
    provider = keys.get("provider")
    if provider == "local":

        if not keys.get("path"):
            raise InvalidInput("[keys] provider = \"local\" needs path")
        return LocalKeyProvider(keys["path"], dev_only=bool(keys.get("dev_only")))
    if provider == "vault":
        if not keys.get("url"):
            raise InvalidInput("[keys] provider = \"vault\" needs url")
        # The token is obtained, renewed and re-obtained in the background (keys/vault_session):
        # a Vault that is down at start makes the control plane not ready, not absent.
        return VaultTransitProvider(url=keys["url"], auth=auth_from_config(keys), mount=keys.get("mount", "transit"),
                                    key_prefix=keys.get("key_prefix", "custos-"), verify=keys.get("verify", True),
                                    check_interval=keys.get("health_interval", 5.0))
    raise InvalidInput("no key provider configured: set [keys] provider (or use --dev)")


def open_checkpoint_signer(keys_cfg: dict[str, Any], keys: KeyProvider, audit_key: Path | None, *,
                           dev: bool) -> CheckpointSigner:
    """Transit signs audit checkpoints when [keys] names checkpoint_key; else the local key file.

    Raises InvalidInput for a checkpoint key without the vault provider, a name a model key
    could take, or an unreadable pinned public key; KeyConflict, IntegrityError as
    TransitCheckpointSigner does.
    """
    name = keys_cfg.get("checkpoint_key")
    if name is None:
        if audit_key is None:
            raise InvalidInput("no audit signing key configured ([keys] checkpoint_key or [audit] signing_key_file)")
        if not dev:
            log.warning("audit checkpoints are signed by a key file on this host (%s): development only; "
                        "set [keys] checkpoint_key to sign them in Transit", audit_key)
        return LocalCheckpointSigner(load_or_create_signing_key(audit_key))
    if not isinstance(keys, VaultTransitProvider):
        raise InvalidInput("[keys] checkpoint_key needs provider = \"vault\"")
    if audit_key is not None and not dev:
        log.warning("[audit] signing_key_file %s is not used: audit checkpoints are signed in Transit", audit_key)
    if not isinstance(name, str) or name.startswith(keys_cfg.get("key_prefix", "custos-")):
        raise InvalidInput("[keys] checkpoint_key must be a key name outside key_prefix (a model could take it)")
    pinned: Ed25519PublicKey | None = None
    if keys_cfg.get("checkpoint_public_key_file"):
        pem = _read(Path(keys_cfg["checkpoint_public_key_file"]), "audit checkpoint public key")
        with contextlib.suppress(ValueError):
            loaded = serialization.load_pem_public_key(pem)
            pinned = loaded if isinstance(loaded, Ed25519PublicKey) else None
        if pinned is None:
            raise InvalidInput("[keys] checkpoint_public_key_file is not an Ed25519 public key (PEM)")
    signer = TransitCheckpointSigner(keys.session, key=name, mount=keys_cfg.get("mount", "transit"), pinned=pinned,
                                     key_version=keys_cfg.get("checkpoint_key_version"))
    if dev and audit_key is not None:
        with contextlib.suppress(CustosError):  # dev.env's CUSTOS_AUDIT_PUBKEY: the key that signs
            write_private(audit_key.with_suffix(".pub"), public_key_pem(signer.public_key()), mode=0o644)
    return signer


def open_blobs(blobs: dict[str, Any]) -> tuple[BlobStore, str]:
    url = blobs.get("url")
    if not url:
        raise InvalidInput("no blob store configured: set [blobs] url (or use --dev)")
    secret = None
    if blobs.get("secret_key_file"):
        secret = _read(Path(blobs["secret_key_file"]), "S3 secret key file").decode().strip()
    return open_blob_store(url, access_key=blobs.get("access_key"), secret_key=secret), url


def dev_env_lines(cfg: ServerConfig, port: int, enroll_port: int = 0) -> list[str]:
    assert cfg.data_dir is not None
    d = cfg.data_dir.resolve()
    host = cfg.listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # noqa: S104 - only to pick a client address
        host = "127.0.0.1"
    env = {
        "CUSTOS_ADDR": f"{host}:{port}",
        "CUSTOS_CA": str(d / "tls" / "ca.pem"),
        "CUSTOS_CERT_DIR": str(d / "tls" / "clients"),
        "CUSTOS_ROLE": "security-team",
        "CUSTOS_AUDIT_PUBKEY": str(d / "audit-signing.pub"),
        "CUSTOS_DATA_DIR": str(d),
        "CUSTOS_ENROLL_ADDR": f"{host}:{enroll_port}" if enroll_port else "",
        "CUSTOS_AGENT_SOCKET": str(d / "agent.sock"),
    }
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def _read(path: Path | None, what: str) -> bytes:
    if path is None:
        raise InvalidInput(f"{what} is not configured (use --dev or a config file)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror}") from None


class ControlPlane:
    """The assembled server; ``start`` then ``wait``/``stop``. Used by the CLI and tests."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.port = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.store: Store | None = None
        self.probes: ProbeServer | None = None

    async def start(self) -> int:
        cfg = self.cfg
        ca, cert, key = _read(cfg.tls_ca, "CA certificate"), _read(cfg.tls_cert, "server certificate"), \
            _read(cfg.tls_key, "server key")
        if not cfg.store_url:
            raise InvalidInput("no store configured: set [store] url or use --dev")
        self.store = open_store(cfg.store_url, tls=cfg.store_tls)
        # Fail fast and clearly if the store is down, rather than at the first call.
        await self.store.revision()
        self.keys = open_key_provider(cfg.keys)
        self.audit = AuditLog(self.store, open_checkpoint_signer(cfg.keys, self.keys, cfg.audit_key, dev=cfg.dev),
                              policy=CheckpointPolicy(cfg.checkpoint_max_events, cfg.checkpoint_max_age))
        self.registry = Registry(self.store, self.audit)
        self.blobs, blob_url = open_blobs(cfg.blobs)
        enroll_ca = None
        if cfg.ca_cert and cfg.ca_key:

            try:
                enroll_ca = CertificateAuthority.load(cfg.ca_cert, cfg.ca_key)
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"cannot load the enrollment CA: {exc}") from None
        self.custody = Custody(self.registry, ca=enroll_ca, lease_ttl=cfg.lease_ttl,
                              agent_cert_ttl=cfg.agent_cert_ttl, revocation_poll=cfg.revocation_poll)
        self.access = AccessService(self.registry)
        self.canaries = CanaryService(self.registry, self.custody)
        await self.canaries.load()
        self.broker = KeyBroker(self.registry, self.keys, self.blobs, blob_url, custody=self.custody,
                                access=self.access)

        self.orders = OrdersService(self.registry, self.custody, keys=self.keys, blobs=self.blobs, agent_ca_pem=ca,
                                    report_signer=open_report_signer(cfg.keys, self.keys, cfg.report_key_file,
                                                                     dev=cfg.dev))
        if cfg.dev and cfg.data_dir is not None:
            await self.orders.install_bootstrap(bootstrap_dev_signers(cfg.data_dir / "signers"))
        elif cfg.signer_set_file is not None:

            await self.orders.install_bootstrap(SignerSet.decode(_read(cfg.signer_set_file, "signer set")))
        await self.orders.refresh_pinned()
        await self.orders.refresh_chain()
        self.orders.fanout.on_order.append(self.broker.learn_order)  # refusals at once after a halt
        if cfg.feed_prefix:  # orders at quorum also go to the order feed in the blob store
            self.orders.enable_feed(self.blobs, cfg.feed_prefix)


        self.incidents = await attach_incidents(
            store=self.store, audit=self.audit, stop=self._stop, custody=self.custody, rules=cfg.rules,
            notify=cfg.notify, metrics=cfg.metrics, base_dir=cfg.config_dir, start=False)
        self.access.outbox = self.incidents.notifier.outbox_puts
        self.who = AccessWho(access=self.access, registry=self.registry, keys=self.keys,
                             cap=self.incidents.rules.access_holders_cap,
                             interval_s=self.incidents.rules.access_holders_interval_s)
        self.reminders = Reminders(self.store, self.incidents.notifier, describe=self.orders.describe)
        if cfg.dev and cfg.data_dir is not None:
            for approver in dev_approvers(cfg.data_dir):
                await self.access.ensure_approver(approver)
        if self.incidents.metrics is not None:
            # Loud when Vault cannot be reached or authenticated: custos_keys_ready, token TTL.
            self.incidents.metrics.extra.append(KeyHealthCollector(self.keys))
            if self.orders.feed is not None:
                self.incidents.metrics.extra.append(OrderFeedCollector(self.orders.feed))
        self.server = grpc.aio.server(interceptors=[GuardInterceptor(self.audit, self.custody)],
                                     options=grpc_options(cfg.idle_connection_s))
        self.admission = Admission()  # custody-stream openings: a reconnect storm first come, first served
        keys_only = cfg.serve == "keys"  # a key-broker replica: its loop answers unwraps and nothing else
        self.served = (KEYS_SERVICE,) if keys_only else SERVICE_NAMES
        keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(self.broker), self.server)
        if not keys_only:
            registry_pb2_grpc.add_RegistryServicer_to_server(
                RegistryServicer(self.registry, self.broker, self.custody), self.server)
            custody_pb2_grpc.add_CustodyServicer_to_server(CustodyServicer(self.custody, self.admission),
                                                           self.server)
            custody_pb2_grpc.add_AlertsServicer_to_server(AlertsServicer(self.custody), self.server)
            orders_pb2_grpc.add_OrdersServicer_to_server(OrdersServicer(self.orders), self.server)
            access_pb2_grpc.add_AccessServicer_to_server(AccessServicer(self.access, who=self.who.who), self.server)
            incidents_pb2_grpc.add_IncidentsServicer_to_server(self.incidents.servicer, self.server)
            audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(self.audit), self.server)
            canaries_pb2_grpc.add_CanariesServicer_to_server(CanariesServicer(self.canaries), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*self.served, reflection.SERVICE_NAME,
                                             health.SERVICE_NAME), self.server)
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                            require_client_auth=True)
        try:
            self.port = self.server.add_secure_port(cfg.listen, creds)
        except RuntimeError as exc:
            raise InvalidInput(f"cannot listen on {cfg.listen}: {exc}") from None
        await self.server.start()
        await self.incidents.start(self._stop)
        self._tasks += self.incidents.tasks
        # Counted and reminded by the replica that leads the rules (meta/rules-leader).
        self._tasks.append(asyncio.create_task(self.who.run(self._stop, lambda: self.incidents.leader)))
        self._tasks.append(asyncio.create_task(self.reminders.run(self._stop, lambda: self.incidents.leader)))
        self.enroll_port = 0
        self.enroll_server = None
        if cfg.enroll_listen and not keys_only:
            self.enroll_server = grpc.aio.server(options=grpc_options(cfg.idle_connection_s))
            custody_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentServicer(self.custody), self.enroll_server)
            enroll_creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=None,
                                                       require_client_auth=False)
            try:
                self.enroll_port = self.enroll_server.add_secure_port(cfg.enroll_listen, enroll_creds)
            except RuntimeError as exc:
                raise InvalidInput(f"cannot listen on {cfg.enroll_listen}: {exc}") from None
            await self.enroll_server.start()
        # Every replica follows the revocation list from the start, streams or not, and the
        # orders through the Store's watch (a key-broker replica: to refuse a halted model's
        # unwraps without a read).
        self._tasks.append(asyncio.create_task(self.custody.revocations.run(self._stop)))
        self._tasks.append(asyncio.create_task(self.orders.run_fanout(self._stop)))
        if not keys_only:  # what agents' streams need: a key-broker replica holds none
            self._tasks.append(asyncio.create_task(self.custody.run_sweeper(cfg.sweep_interval, self._stop)))
            self._tasks.append(asyncio.create_task(self.custody.run_flusher(0.25, self._stop)))
            self._tasks.append(asyncio.create_task(self.orders.run_completion(cfg.sweep_interval, self._stop)))
            self._tasks.append(asyncio.create_task(self.orders.run_ack_worker(self._stop)))
            # Canaries planted on other replicas reach hosts here; a canary-opened alert correlates at once.
            self._tasks.append(asyncio.create_task(self.canaries.run(self._stop, kick=self.incidents.kick)))
        await self.orders.resume_pending()
        for name in ("", *self.served):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.probe_listen:
            self.probes = ProbeServer(cfg.probe_listen, readiness_checks(store=self.store, keys=self.keys))
            await self.probes.start()
        self._tasks.append(asyncio.create_task(
            self.audit.run_checkpoints(cfg.checkpoint_interval, self._stop)))
        self._tasks.append(asyncio.create_task(ShortPauses().run(self._stop)))
        log.info("control plane listening", extra={"fields": {
            "listen": cfg.listen, "port": self.port, "store": self.store.kind, "serve": cfg.serve}})
        return self.port

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        log.info("control plane stopping")
        if self.probes is not None:
            self.probes.drain()  # out of the load balancer first, while calls drain
        try:
            await self.health.enter_graceful_shutdown()
        except Exception:  # noqa: BLE001, S110 - shutting down regardless
            pass
        if getattr(self, "enroll_server", None) is not None:
            await self.enroll_server.stop(1.0)  # type: ignore[union-attr]
        await self.server.stop(grace)
        if self.probes is not None:
            await self.probes.close()
        for t in self._tasks:
            t.cancel()
        if getattr(self, "incidents", None) is not None:
            await self.incidents.close()
        try:
            await self.audit.flush()
            await self.audit.checkpoint()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("final audit checkpoint failed: %s", exc)
        if self.store is not None:
            await self.store.close()
        for closer in (getattr(self, "keys", None), getattr(self, "blobs", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:  # noqa: BLE001 - best effort on the way out
                    log.warning("closing %s failed: %s", type(closer).__name__, exc)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the control plane's event loop: uvloop's when it is installed (a shorter path per
    callback for every stream), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def run(cfg: ServerConfig, *, announce: bool = True) -> None:
    if cfg.dev:
        prepare_dev(cfg)
    cp = ControlPlane(cfg)
    port = await cp.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, cp.request_stop)
    if cfg.dev and cfg.data_dir is not None and cfg.serve == "keys":
        if announce:  # the dev.env of the replica that serves everything stays as it is
            print(f"Custos dev key-broker replica (DEVELOPMENT ONLY): Keys on port {port}.", flush=True)
    elif cfg.dev and cfg.data_dir is not None:
        lines = dev_env_lines(cfg, port, cp.enroll_port)
        env_path = cfg.data_dir / "dev.env"
        write_private(env_path, ("# Custos dev server: source this file to point the CLI at it.\n"
                                 + "\n".join(lines) + "\n").encode())
        if announce:
            print("Custos dev server (DEVELOPMENT ONLY: generated CA, local files).", flush=True)
            print(f"In another shell:  source {env_path}", flush=True)
            print("\n".join(lines), flush=True)
    await cp.wait()
