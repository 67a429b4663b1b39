"""`custos agent run`: the host agent daemon.

One asyncio process that:

- keeps the custody stream up (custos.agent.stream) and the custody lease live;
- keeps the host's inventory (custos.agent.inventory) current and reported:
  weight files (custos.agent.scanner: a full scan at start and every
  ``scan.interval``, inotify deltas in between) and the processes holding them
  (custos.agent.processes, every ``scan.process_interval``); a full
  ``Inventory`` on every connection and after every full scan, deltas otherwise;
- runs supervised workloads for `custos run` (custos.agent.workloads) behind
  its local socket (custos.agent.localapi);
- executes halts (custos.agent.halt) and fails closed: when the lease is not
  renewed by its deadline, or the control plane removes this host, it halts
  everything it covers and refuses runs until a fresh lease arrives.

Blocking work (hashing, /proc scans, stopping processes, wiping) runs in
threads so heartbeats keep flowing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custos.agent.calls import AgentCalls
from custos.agent.canary import Canaries
from custos.agent.config import AgentConfig
from custos.agent.enroll import Identity, dev_enroll, load_identity, read_credentials
from custos.agent.feed import OrderIntake
from custos.agent.guard import Guard, workload_zones
from custos.agent.halt import HaltBlocks, Halter, HaltEvidence, ManifestCache, iso_utc
from custos.agent.inventory import Inventory
from custos.agent.localapi import LocalApi
from custos.agent.renew import CertificateRenewal
from custos.agent.scanner import Hasher, Watcher
from custos.agent.stream import Credentials, CustodyStream, LeaseGrant, OrderHandler, RefuseUnverifiedOrders
from custos.agent.workloads import Supervisor, become_subreaper
from custos.blobs.base import BlobStore
from custos.blobs.url import open_blob_store
from custos.errors import CustosError, FailedPrecondition
from custos.fs.private import private_dir
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent")

OrderHandlerFactory = Callable[["Agent"], OrderHandler]
ACCESS_QUEUE = 2000  # access events held while disconnected (the oldest go first)
ACCESS_RESEND_S = 10.0  # sent this shortly before a disconnect: sent again
GUARD_TICK_S = 1.0


class Agent:
    """The daemon. ``await Agent(cfg).run()`` until SIGTERM / :meth:`request_stop`.

    ``order_handler_factory`` builds the handler for signed orders (it gets the
    agent: ``agent.halt_local``, ``agent.lift_local``, ``agent.identity``); the
    default refuses every order.
    """

    def __init__(self, cfg: AgentConfig, *, order_handler_factory: OrderHandlerFactory | None = None,
                 hasher: Hasher | None = None) -> None:
        self.cfg = cfg
        self._order_handler_factory = order_handler_factory
        self._hasher = hasher
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()
        self._need_full = True
        self._proc_kick = asyncio.Event()
        self._lease_changed = asyncio.Event()
        self._halt_lock = asyncio.Lock()
        self._closing = threading.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.identity: Identity | None = None
        self.lease: LeaseGrant | None = None
        self.failed_closed: str | None = None
        self.last_halt: HaltEvidence | None = None
        self.stopping = False
        self._resuming = False
        self._blobs: dict[str, BlobStore] = {}
        self.started_unix_ns = time.time_ns()
        # AccessEvents of the guard: queued (bounded) while disconnected; those sent just before a
        # disconnect are sent again (the control plane's alert ids make a repeat harmless).
        self._access_q: collections.deque[custody_pb2.AccessEvent] = collections.deque(maxlen=ACCESS_QUEUE)
        self._access_sent: collections.deque[tuple[float, custody_pb2.AccessEvent]] = collections.deque(maxlen=512)
        self._access_kick = asyncio.Event()
        self.access_dropped = 0

    # - identity -

    async def _ensure_identity(self) -> None:
        cfg = self.cfg
        private_dir(cfg.state_dir)
        if cfg.cert_file is not None:
            read_credentials(ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file or Path())
            return
        self.identity = load_identity(cfg.state_dir, cfg.name)
        if self.identity is not None:
            return
        if not cfg.dev:
            raise FailedPrecondition(
                f"host {cfg.name!r} is not enrolled (no identity in {cfg.state_dir / 'identity'}): run "
                f"`custos agent enroll --name {cfg.name} --state-dir {cfg.state_dir} ...` first")
        self.identity = await dev_enroll(cfg)

    def _credentials(self) -> Credentials:
        cfg = self.cfg
        if cfg.cert_file is not None:
            return read_credentials(ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file or Path())
        d = cfg.state_dir / "identity"
        return read_credentials(ca_file=cfg.ca_file, cert_file=d / "agent.pem", key_file=d / "agent.key")

    def _open_blobs(self, url: str) -> BlobStore:
        if not url:
            raise FailedPrecondition("the control plane did not say where the artifact's ciphertext is")
        if url not in self._blobs:
            secret = None
            if self.cfg.blobs_secret_key_file is not None:
                try:
                    secret = self.cfg.blobs_secret_key_file.read_text().strip()
                except OSError as exc:
                    raise FailedPrecondition(f"cannot read {self.cfg.blobs_secret_key_file}: {exc.strerror}") from None
            self._blobs[url] = open_blob_store(url, access_key=self.cfg.blobs_access_key or None, secret_key=secret)
        return self._blobs[url]

    # - lease and fail-closed -

    def lease_live(self) -> bool:
        return self.lease is not None and time.monotonic() < self.lease.expires_monotonic

    def refusal(self) -> str | None:
        """Why new runs are refused right now, or None."""
        if self.stopping:
            return "the agent is stopping"
        if self.stream.removed is not None:
            return "this host was removed from custody (re-enroll it)"
        if self.failed_closed is not None:
            return f"failed closed ({self.failed_closed}); waiting for a fresh custody lease"
        if self.lease is None:
            return "no custody lease yet (not connected to the control plane)"
        if not self.lease_live():
            return "the custody lease has expired"
        return self.blocks.all_reason

    def _on_lease(self, grant: LeaseGrant) -> None:
        self.lease = grant
        self._lease_changed.set()
        if self.failed_closed is not None and not self._resuming:
            self._resuming = True
            self._spawn(self._resume())

    async def _resume(self) -> None:
        try:
            async with self._halt_lock:
                if self.failed_closed is not None and self.lease_live() and self.stream.removed is None:
                    await asyncio.to_thread(self.halter.lift_local, None)
                    log.warning("custody lease renewed: resuming service (stopped workloads are not restarted)",
                                extra={"fields": {"was": self.failed_closed}})
                    self.failed_closed = None
        finally:
            self._resuming = False

    async def _watchdog(self) -> None:
        while not self._stop.is_set():
            self._lease_changed.clear()
            grant = self.lease
            if grant is None or self.failed_closed is not None:
                await _wait(self._lease_changed, 1.0)
                continue
            delay = grant.expires_monotonic - time.monotonic()
            if delay > 0:
                await _wait(self._lease_changed, delay)
                continue
            if self.lease is not grant:
                continue
            expired_at = time.time() - (time.monotonic() - grant.expires_monotonic)
            await self.fail_closed(f"custody lease expired at {iso_utc(expired_at)}")

    async def fail_closed(self, reason: str) -> HaltEvidence | None:
        """Halt everything this agent covers and refuse runs until a fresh lease. Idempotent."""
        async with self._halt_lock:
            if self.failed_closed is not None:
                return None
            self.failed_closed = reason
            log.error("failing closed: halting every supervised workload and wiping managed plaintext",
                      extra={"fields": {"reason": reason}})
            ev = await asyncio.to_thread(self.halter.halt_local, None, reason=reason)
            self.last_halt = ev
            return ev

    async def _on_removed(self, reason: str) -> None:
        self.lease = None
        self._lease_changed.set()
        await self.fail_closed(f"host removed from custody by the control plane: {reason}")

    # - public halt entry points (for the order handler) -

    async def halt_local(self, scope: set[str] | None, *, reason: str, dry_run: bool = False,
                         drill: bool = False) -> HaltEvidence:
        """Run :meth:`Halter.halt_local` off the event loop. Raises InvalidInput."""
        async with self._halt_lock:
            ev = await asyncio.to_thread(self.halter.halt_local, scope, reason=reason, dry_run=dry_run, drill=drill)
            if not dry_run:
                self.last_halt = ev
            return ev

    async def lift_local(self, scope: set[str] | None) -> None:
        """Run :meth:`Halter.lift_local`. Raises InvalidInput."""
        async with self._halt_lock:
            await asyncio.to_thread(self.halter.lift_local, scope)

    # - status -

    def status(self) -> dict[str, Any]:
        lease: dict[str, Any] = {"state": "none"}
        if self.stream.removed is not None:
            lease = {"state": "removed"}
        elif self.lease is not None:
            left = self.lease.expires_monotonic - time.monotonic()
            lease = {"state": "live" if left > 0 else "expired", "expires_in_s": round(left, 3),
                     "ttl_s": self.lease.ttl_seconds, "server_expires_unix_ns": self.lease.server_expires_unix_ns}
        return {
            "host": self.cfg.name, "connected": self.stream.connected, "connections": self.stream.connections,
            "lease": lease, "failed_closed": self.failed_closed, "refusing": self.refusal(),
            "blocks": self.blocks.snapshot(), "workloads": self.supervisor.list_workloads(),
            "managed_roots": self.supervisor.managed_roots(),
            "inventory": self.inventory.status(),
            "last_halt": self.last_halt.as_dict() if self.last_halt is not None else None,
            "guard": {**self.guard.status(), "events_queued": len(self._access_q),
                      "events_dropped_queue": self.access_dropped},
            "orders": self.intake.status(),
            "dev": self.cfg.dev,
        }

    # - loops -

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _mark(self, *, full: bool = False) -> None:
        if full:
            self._need_full = True
        self._dirty.set()

    def _on_managed_change(self) -> None:
        guard = getattr(self, "guard", None)
        if guard is not None:
            guard.sync_workloads()  # a new run is guarded before its id is handed to anyone
        self._proc_kick.set()
        self._mark(full=True)

    async def _initial_messages(self) -> list[custody_pb2.AgentMessage]:
        # Every canary on every connection: the control plane records what it has not seen.
        canaries = [custody_pb2.AgentMessage(canary=r) for r in self.canaries.reports()]
        if not self.inventory.ready:
            return canaries  # the first full scan sends the inventory when done
        self._need_full = False
        return [*canaries, custody_pb2.AgentMessage(inventory=self.inventory.full_report())]

    # - canaries -

    async def _plant_canary(self, req: custody_pb2.PlantCanary) -> None:
        res = await asyncio.to_thread(self.canaries.plant, req.canary_id, req.path, req.model)
        await self._canaries_planted([res])

    async def _plant_configured(self) -> None:
        reports = await asyncio.to_thread(self.canaries.plant_configured) if self.cfg.canary.paths else []
        await self._canaries_planted(reports)

    async def _canaries_planted(self, reports: list[custody_pb2.CanaryPlanted]) -> None:
        """Hash the new decoys into the scan cache (so the scanner does not open them again), then
        let the guard watch every decoy, then tell the control plane."""
        paths = [f.path for r in reports for f in r.files]
        if paths:
            try:
                await self.inventory.rescan(paths)
            except Exception:
                log.exception("rescanning new canary decoys failed")
        await asyncio.to_thread(self.guard.set_canaries, self.canaries.watched())
        for r in reports:
            self.stream.send(custody_pb2.AgentMessage(canary=r))  # else: sent with the next connection's
        self._mark(full=True)

    def _on_connected(self) -> None:
        # A re-enrollment may have replaced the identity (and the pinned signer set) on disk.
        if self.cfg.cert_file is None:
            try:
                self.identity = load_identity(self.cfg.state_dir, self.cfg.name) or self.identity
            except CustosError as exc:
                log.warning("cannot re-read this host's identity", extra={"fields": {"error": str(exc)}})
        self._access_kick.set()

    def _on_disconnected(self, reason: str) -> None:
        self.inventory.forget_sent()
        self._need_full = True
        # Access events written just before the stream broke may not have reached the control plane.
        now = time.monotonic()
        for at, ev in reversed(self._access_sent):
            if now - at < ACCESS_RESEND_S:
                self._access_q.appendleft(ev)
        self._access_sent.clear()

    # - kernel-checked opens -

    def _on_access(self, ev: custody_pb2.AccessEvent) -> None:
        """From the guard's reporter thread: hand the event to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is gone
            self._loop.call_soon_threadsafe(self._queue_access, ev)

    def _queue_access(self, ev: custody_pb2.AccessEvent) -> None:
        if len(self._access_q) == self._access_q.maxlen:
            self.access_dropped += 1
        self._access_q.append(ev)
        self._access_kick.set()

    async def _access_loop(self) -> None:
        """Send AccessEvents as they come; hold them while the stream is down."""
        while not self._stop.is_set():
            await _wait(self._access_kick, 1.0)
            self._access_kick.clear()
            while self._access_q and self.stream.connected:
                ev = self._access_q[0]
                if not self.stream.send(custody_pb2.AgentMessage(access=ev)):
                    break
                self._access_q.popleft()
                self._access_sent.append((time.monotonic(), ev))

    async def _guard_loop(self) -> None:
        """Keep the guard's marks in step (new registered weights, protected subdirectories, members)."""
        while not self._stop.is_set():
            await _wait(self._stop, GUARD_TICK_S)
            if not self._stop.is_set():
                await asyncio.to_thread(self.guard.tick)
                self.inventory.guard = self.guard.mode_text

    async def _reporter(self) -> None:
        while not self._stop.is_set():
            await self._dirty.wait()
            self._dirty.clear()
            if not self.inventory.ready or not self.stream.connected:
                continue
            try:
                if self._need_full:
                    self._need_full = False
                    inv: custody_pb2.Inventory | None = self.inventory.full_report()
                else:
                    inv = self.inventory.delta_report()
            except Exception:
                log.exception("building the inventory report failed")
                continue
            if inv is not None and not self.stream.send(custody_pb2.AgentMessage(inventory=inv)):
                self.inventory.forget_sent()
            elif inv is not None:
                log.debug("inventory sent", extra={"fields": {
                    "full": inv.full, "files": len(inv.files), "removed": len(inv.removed_paths),
                    "processes": len(inv.processes)}})

    async def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.inventory.full_scan()
                await self.inventory.scan_processes()
                self._mark(full=True)
            except Exception:
                log.exception("full scan failed")
            await _wait(self._stop, self.cfg.scan_interval)

    async def _process_loop(self) -> None:
        while not self._stop.is_set():
            await _wait(self._proc_kick, self.cfg.process_interval)
            self._proc_kick.clear()
            if not self.inventory.ready:
                continue
            try:
                await self.inventory.scan_processes()
                self._mark()
            except Exception:
                log.exception("process scan failed")

    async def _watch_loop(self) -> None:
        if not self.cfg.watch:
            return
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[list[str]] = asyncio.Queue()
        th = threading.Thread(target=self._watch_thread, args=(loop, q), name="custos-watch", daemon=True)
        th.start()
        while not self._stop.is_set():
            batch = set(await q.get())
            while not q.empty():
                batch |= set(q.get_nowait())
            if not self.inventory.ready:
                continue  # the first full scan covers it
            try:
                await self.inventory.rescan(sorted(batch))
                self._mark()
            except Exception:
                log.exception("rescan failed")

    def _watch_thread(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue[list[str]]) -> None:
        try:
            watcher = Watcher(self.inventory.scan_config, poll_interval=max(1.0, min(self.cfg.scan_interval, 60.0)))
        except CustosError as exc:
            log.warning("no file watching; relying on full scans", extra={"fields": {"error": str(exc)}})
            return
        with watcher:
            log.info("watching scan roots", extra={"fields": {"mode": watcher.mode,
                                                              "watches": watcher.watch_count}})
            while not self._closing.is_set():
                try:
                    batch = watcher.poll(1.0)
                except Exception:
                    log.exception("file watcher failed")
                    time.sleep(1.0)
                    continue
                if batch:
                    loop.call_soon_threadsafe(q.put_nowait, batch)

    # - run -

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped. Raises FailedPrecondition / InvalidInput for start-up problems
        (not enrolled, unusable state dir or socket)."""
        cfg = self.cfg
        await self._ensure_identity()
        become_subreaper()
        self.blocks = HaltBlocks(cfg.state_dir / "halts.json")
        self.manifests = ManifestCache(cfg.state_dir / "manifests")
        self.stream = CustodyStream(
            addr=cfg.addr, credentials=self._credentials, initial_messages=self._initial_messages,
            on_lease=self._on_lease, on_removed=self._on_removed, on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            heartbeat_interval=cfg.heartbeat_interval, reconnect_max=cfg.reconnect_max,
            server_name=cfg.server_name, held_acks=cfg.state_dir / "held-acks.json")
        self.calls = AgentCalls(self.stream)
        self.supervisor = Supervisor(
            name=cfg.name, state_dir=cfg.state_dir, plaintext_dir=cfg.plaintext_dir, calls=self.calls,
            blocks=self.blocks, manifests=self.manifests, refusal=self.refusal, open_blobs=self._open_blobs,
            stop_grace=cfg.stop_grace, on_change=self._on_managed_change,
            grant_check_interval=cfg.grant_check_interval)
        bases = tuple(str(b) for b in self.supervisor.bases())
        self.inventory = Inventory(cfg, self.supervisor, hasher=self._hasher, extra_exclude=bases)
        self.canaries = Canaries(host=cfg.name, state_dir=cfg.state_dir, scan_roots=cfg.scan_roots,
                                 managed=lambda: [cfg.state_dir, *self.supervisor.bases()], settings=cfg.canary)
        self.canaries.load()
        self.inventory.canaries = self.canaries
        self.stream.on_plant_canary = lambda req: self._spawn(self._plant_canary(req))
        self._loop = asyncio.get_running_loop()
        halts = self.blocks.snapshot()
        self.guard = Guard(cfg.guard, workloads=lambda: workload_zones(self.supervisor),
                           records=self.inventory.records, manifests=self.manifests,
                           managed_bases=self.supervisor.bases, on_event=self._on_access,
                           halted=(halts["all"] is not None, tuple(halts["artifacts"])))
        # A halt makes the scope's guarded files refuse every opener before any process is signalled.
        self.halter = Halter(supervisor=self.supervisor, blocks=self.blocks, manifests=self.manifests,
                             records=self.inventory.records, grace_s=cfg.stop_grace,
                             deny_opens=self.guard.deny_all, allow_opens=self.guard.lift)
        self.stream.order_handler = (self._order_handler_factory(self) if self._order_handler_factory
                                     else RefuseUnverifiedOrders())
        # Orders over any path: the feed, the drop directory, apply-order — the same handler.
        feed_url = cfg.orders_feed_url
        self.intake = OrderIntake(
            handler=self.stream.order_handler, deliver=self.stream.deliver_ack,
            drop_dir=cfg.orders_drop_dir or cfg.state_dir / "orders-drop",
            open_feed=(lambda: self._open_blobs(feed_url)) if feed_url else None,
            feed_prefix=cfg.orders_feed_prefix, feed_interval=cfg.orders_feed_interval)
        await asyncio.to_thread(self.supervisor.cleanup_leftovers)
        await asyncio.to_thread(self.guard.start)  # FailedPrecondition: fanotify required and not there
        self.inventory.guard = self.guard.mode_text
        self.api = LocalApi(cfg.socket_path, status=self.status, supervisor=self.supervisor,
                            allowed_uids=cfg.allowed_uids, allowed_gids=cfg.allowed_gids,
                            apply_order=self.intake.apply_fd)
        await self.api.start()
        self._spawn(self._plant_configured())  # also hands the guard the canaries planted before
        self.metrics_port = 0
        if cfg.metrics_listen:
            from custos.agent.metrics import start_metrics  # optional: prometheus-client, the metrics extra

            self._metrics_server, self.metrics_port = start_metrics(cfg.metrics_listen, self.status)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        if cfg.dev:
            log.warning("DEVELOPMENT MODE: identity enrolled with the dev security-team certificate")
        log.info("agent started", extra={"fields": {
            "host": cfg.name, "addr": cfg.addr, "roots": [str(r) for r in cfg.scan_roots],
            "socket": str(cfg.socket_path), "state_dir": str(cfg.state_dir), "pid": os.getpid()}})
        for coro in (self.stream.run(self._stop), self._watchdog(), self._reporter(), self._scan_loop(),
                     self._process_loop(), self._watch_loop(), self.intake.run(self._stop), self._guard_loop(),
                     self._access_loop()):
            self._spawn(coro)
        if cfg.cert_file is None:  # an enrolled identity renews itself; an operator's certificate is theirs
            self.renewal = CertificateRenewal(identity_dir=cfg.state_dir / "identity", name=cfg.name,
                                              channel=lambda: self.stream.channel if self.stream.connected else None)
            self._spawn(self.renewal.run(self._stop))
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()
        return 0

    async def _shutdown(self) -> None:
        log.info("agent stopping: halting supervised workloads and wiping their plaintext")
        self.stopping = True
        self._closing.set()
        try:
            async with self._halt_lock:
                if self.supervisor.active():
                    await asyncio.to_thread(self.halter.halt_local, None, reason="the agent is stopping")
                    self.blocks.unblock(None)  # in memory only; the next start has no lease until it connects
        except Exception:
            log.exception("halting on shutdown failed")
        await self.api.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.supervisor.close()
        await asyncio.to_thread(self.guard.close)  # after the halt above: its wipes were still guarded
        self.inventory.close()
        for b in self._blobs.values():
            with contextlib.suppress(Exception):
                b.close()
        log.info("agent stopped")


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))

