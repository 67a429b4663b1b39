"""Hosts, enrollment, custody leases and inventory ingestion.

A host is added by the security team (a one-time enrollment token, only its
hash stored), enrolls by trading the token and a CSR for a client certificate
(CN = host, OU = agent; the key never leaves the host), then keeps one custody
stream open: inventories and heartbeats up, leases and orders down.

Store keys:
    hosts/{name}                   host record (audited changes; its certificates: custos.controlplane.certificates)
    revoked/{fingerprint}          revoked certificates (custos.controlplane.revocations)
    leases/{name}                  custody lease: expires_ns, state (live | lapsed | revoked)
    inventory/{name}               last report summary
    hostcopies/{name}/{copy-key}   index of the copies seen on the host
    alerts/{id}                    alert records (deterministic ids: one per finding)

Lease renewals and inventories are high-volume observations, written with
compare-and-set but not through the audit chain; lapses, enrollment and host
changes are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from custos.controlplane.audit import SYSTEM, Caller, Plan
from custos.controlplane.batching import GroupCommit
from custos.controlplane.certificates import (
    CertificateExpired,
    HostCertificates,
    accepted_until,
    certificate_fields,
    check_reason,
    iso,
    load_csr,
)
from custos.controlplane.periodic import every
from custos.controlplane.pki import AGENT_CERT_TTL, CertificateAuthority
from custos.controlplane.registry import Registry, new_copy
from custos.controlplane.revocations import POLL, RevocationList
from custos.controlplane.store.base import MAX_TXN_OPS, Entry, Txn, check_puts
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.hosts import validate_host_name
from custos.core.manifest import decode_manifest, is_artifact_id
from custos.core.matching import HashedFile, HostCopy, ManifestIndex, UnregisteredWeights, weight_like_name
from custos.core.rules import RULES
from custos.errors import Conflict, FailedPrecondition, InvalidInput, NotFound, Unauthorized

log = logging.getLogger("custos.custody")

DEFAULT_TOKEN_TTL = 3600
SWEEP_AT_LEAST_EVERY_S = 10.0  # the longest the periodic lease sweep is skipped
RENEWALS_PER_TXN = (MAX_TXN_OPS - 10) // 2  # a check and a put each
REPORTS_PER_WRITE = 32  # reports whose writes one group commit takes
STALE_REPORT_NS = 10_000_000_000  # how long a halt's evidence outranks a report that still shows the copy
# Agents hash every file from 1 MiB up to find renamed copies; one that matches nothing
# alerts only if it is named like weights or is this large (the agent's old size rule).
LARGE_UNREGISTERED = 256 << 20
# What an agent's AccessEvent kind becomes (custos.core.rules), and how many such alerts one host may
# write a minute (a flood of opens by new pids must not fill the Store).
ACCESS_RULES = {"denied": "open-denied", "read": "weights-read", "canary": "canary-opened"}
ACCESS_ALERTS_PER_MINUTE = 600


def _token_hash(token: str) -> str:
    return hashlib.sha256(b"custos.v1.enrollment-token\x00" + token.encode()).hexdigest()


class HostNotEnrolled(Unauthorized):
    """The caller's certificate does not belong to an enrolled host (removed, re-enrolled, unknown)."""


class LeaseNotLive(FailedPrecondition):
    """The host's custody lease has lapsed or was revoked: it must reconnect first."""


class Custody:
    def __init__(
        self,
        registry: Registry,
        *,
        ca: CertificateAuthority | None,
        lease_ttl: float = 30.0,
        signer_set: Callable[[], bytes] | None = None,
        agent_cert_ttl: float = AGENT_CERT_TTL,
        revocation_poll: float = POLL,
    ) -> None:
        self.registry = registry
        self.store = registry.store
        self.audit = registry.audit
        self.ca = ca
        self.revocations = RevocationList(self.store, poll=revocation_poll)
        self.certs = HostCertificates(self.audit, ca, ttl=agent_cert_ttl, revocations=self.revocations)
        self.revocations.on_revoked = self._close_revoked
        self.lease_ttl = lease_ttl
        self.signer_set = signer_set or (lambda: b"")
        self.streams: dict[str, asyncio.Queue[Any]] = {}
        self.unwritten = 0  # order messages queued on streams here, not yet written (send_order)
        self._all_written = asyncio.Event()
        self._all_written.set()
        self._files: dict[str, dict[str, Any]] = {}  # host -> path -> file record (this replica's view)
        # host -> (digest of the last report ingested, its copy keys, digest of the records it left)
        self._digests: dict[str, tuple[str, list[str], str]] = {}
        self._summaries: dict[str, dict[str, Any]] = {}  # host -> last report summary, not yet written
        self._host_locks: dict[str, asyncio.Lock] = {}
        self._renewals: GroupCommit[str, int | None] = GroupCommit(self._renew_batch, "lease renewals")
        self._reads: GroupCommit[str, Entry | None] = GroupCommit(self._read_batch, "point reads")
        # Reports' writes (copies, their index, alerts), many reports a transaction
        self._report_writes: GroupCommit[int, None] = GroupCommit(self._write_reports, "report writes",
                                                                  max_batch=REPORTS_PER_WRITE)
        self._report_puts: dict[int, dict[str, bytes]] = {}
        self._report_seq = 0
        self._sweep_due_ns = 0  # when a live lease may expire first (sweep_if_due)
        self._policies: dict[str, dict[str, Any]] = {}  # model -> record, for the current registry revision
        self._policies_rev = -1
        self._index: Any = None
        self._index_rev = -1
        self._index_lock = asyncio.Lock()
        self.on_ack: Callable[[str, Any, int], Any] | None = None
        self.on_attach: Callable[[str], Any] | None = None
        self.on_inventory: Callable[[str, Any], Awaitable[Any]] | None = None  # the rules engine's hook
        self.on_alert: Callable[[dict[str, Any]], Awaitable[Any]] | None = None  # a new access alert was written
        self._access_budget: dict[str, tuple[int, int]] = {}  # host -> (minute, access alerts written)
        # Canaries (custos.controlplane.canaries): a stream got its lease, an agent's CanaryPlanted,
        # and the decoys ingestion skips (returning alerts for decoys whose bytes changed).
        self.on_leased: Callable[[str, asyncio.Queue[Any]], Any] | None = None
        self.on_canary: Callable[[str, Any, Caller], Awaitable[Any]] | None = None
        self.screen_decoys: Callable[[str, dict[str, dict[str, Any]], Any], list[dict[str, Any]]] | None = None

    # -- hosts -------------------------------------------------------------------

    async def read(self, key: str) -> Entry | None:
        """``store.get(key)``, read together with the other point reads of this moment (every
        heartbeat's host check, every report's registry marker): one ``get_many`` a round
        trip instead of one read each. Each read still starts after it was asked for."""
        return await self._reads.submit(key)

    async def _read_batch(self, keys: list[str]) -> dict[str, Entry | BaseException | None]:
        found = await self.store.get_many(keys)
        return {k: found.get(k) for k in keys}

    async def get_host(self, name: str) -> dict[str, Any]:
        validate_host_name(name)
        entry = await self.read(f"hosts/{name}")
        if entry is None:
            raise NotFound(f"host {name!r} not found")
        return dict(decode_canonical(entry.value))

    async def add_host(self, caller: Caller, *, name: str, labels: dict[str, str],
                       token_ttl: int = 0) -> tuple[dict[str, Any], str, int]:
        """Add (or re-add a removed) host with a fresh one-time enrollment token.

        Raises InvalidInput, Conflict (an enrolled or pending host of that name).
        """
        ttl = token_ttl or DEFAULT_TOKEN_TTL
        # A fixed prefix: a token is never mistaken for a command-line option (urlsafe can start with "-").
        token = "cet_" + secrets.token_urlsafe(32)
        expires = time.time_ns() + int(ttl) * 1_000_000_000

        async def plan() -> tuple[Plan, dict[str, Any]]:
            validate_host_name(name)
            if not 60 <= ttl <= 7 * 86400:
                raise InvalidInput("token TTL must be between 60 s and 7 days")
            if len(labels) > 32 or any(not re.fullmatch(r"[a-z0-9_./-]{1,63}", k) or len(v) > 253
                                       for k, v in labels.items()):
                raise InvalidInput("bad labels: at most 32, keys a-z 0-9 _ . / -, values <= 253 chars")
            old = await self.store.get(f"hosts/{name}")
            if old is not None and decode_canonical(old.value)["state"] not in ("removed", "revoked"):
                raise Conflict(f"host {name!r} already exists; remove it first to re-enroll")
            record = {
                "cert_fingerprint": "", "enrolled_at_ns": 0, "labels": dict(sorted(labels.items())),
                "name": name, "state": "pending", "token_expires_ns": expires,
                "token_hash": _token_hash(token), "added_by": caller.principal,
            }
            txn = Txn(checks={f"hosts/{name}": old.mod_revision if old else 0},
                      puts={f"hosts/{name}": encode_canonical(record)})
            return Plan(txn), record

        record = await self.audit.mutate(caller, "AddHost", f"host/{name}", plan)
        return record, token, expires

    async def remove_host(self, caller: Caller, *, name: str) -> dict[str, Any]:
        """Remove a host: its certificates are revoked (refused by every replica from now on),
        its lease revoked, its copies marked stale, its streams told to stop. Raises NotFound."""
        record, _ = await self._retire(caller, name, state="removed", action="RemoveHost",
                                       reason=f"host removed by {caller.principal}")
        return record

    async def revoke_host(self, caller: Caller, *, name: str, reason: str) -> tuple[dict[str, Any], list[Any]]:
        """Revoke every certificate of a host: as removed, but ``revoked``. Raises NotFound, InvalidInput."""
        why = check_reason(reason) or "no reason given"
        return await self._retire(caller, name, state="revoked", action="RevokeCertificate",
                                  reason=f"host revoked by {caller.principal}: {why}")

    async def _retire(self, caller: Caller, name: str, *, state: str, action: str,
                      reason: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        plan = self.certs.retire_plan(name, state=state, reason=reason, by=caller.principal)
        record, revoked = await self.audit.mutate(caller, action, f"host/{name}", plan)
        self.revocations.learn(revoked)
        await self._mark_host_copies(name, "stale")
        # This replica's stream at once; the others' when their revocation watch sees the list.
        self._close_stream(name, f"certificate not accepted: {reason}")
        return record, revoked

    async def list_hosts(self) -> list[dict[str, Any]]:
        out = []
        leases = {e.key[len("leases/"):]: decode_canonical(e.value) for e in await self.store.range("leases/")}
        inv = {e.key[len("inventory/"):]: decode_canonical(e.value) for e in await self.store.range("inventory/")}
        inv.update(self._summaries)  # this replica's newest, not yet flushed
        now = time.time_ns()
        for e in await self.store.range("hosts/"):
            h = dict(decode_canonical(e.value))
            lease = leases.get(h["name"], {"expires_ns": 0, "state": "none"})
            state = lease["state"]
            if state == "live" and lease["expires_ns"] < now:
                state = "lapsed"
            h["lease_expires_ns"] = lease["expires_ns"]
            h["lease_state"] = state
            summary = inv.get(h["name"], {})
            h["last_report_ns"] = summary.get("at_ns", 0)
            h["files"] = summary.get("files", 0)
            h["processes"] = summary.get("processes", 0)
            h["guard"] = summary.get("guard", "")
            h["connected"] = h["name"] in self.streams
            out.append(h)
        return out

    # -- enrollment ---------------------------------------------------------------

    async def enroll(self, *, peer: str, name: str, token: str, csr_pem: bytes) -> tuple[bytes, bytes]:
        """Trade a one-time token and a CSR for the host's client certificate.

        Raises Unauthorized (bad, used or expired token), InvalidInput (bad CSR),
        FailedPrecondition (no CA to sign with).
        """
        who = Caller(principal=name[:253] if isinstance(name, str) else "?", role="enrollment",
                     host=peer, request_id="")
        if self.ca is None:
            raise FailedPrecondition("this control plane has no CA key configured for enrollment")
        csr = load_csr(csr_pem)

        async def plan() -> tuple[Plan, bytes]:
            validate_host_name(name)
            entry = await self.store.get(f"hosts/{name}")
            record = dict(decode_canonical(entry.value)) if entry else None
            if (record is None or record["state"] != "pending" or not record["token_hash"]
                    or not hmac.compare_digest(record["token_hash"], _token_hash(token or ""))):
                raise Unauthorized(f"enrollment refused for host {name!r}: unknown host, bad or used token")
            if record["token_expires_ns"] < time.time_ns():
                raise Unauthorized(f"enrollment token for host {name!r} has expired")
            cert = self.certs.issue(csr, name)
            record.update(state="enrolled", token_hash="", enrolled_at_ns=time.time_ns(), **certificate_fields(cert))
            assert entry is not None
            txn = Txn(checks={f"hosts/{name}": entry.mod_revision},
                      puts={f"hosts/{name}": encode_canonical(record)}, deletes=[f"leases/{name}"])
            return Plan(txn), cert

        cert = await self.audit.mutate(who, "Enroll", f"host/{name}", plan)
        return cert, self.certs.ca_pem

    async def check_agent(self, caller: Caller, *, need_lease: bool) -> dict[str, Any]:
        """The enrolled host behind an agent certificate (its current one, or the one it renewed
        until that expires). Raises HostNotEnrolled, CertificateExpired, LeaseNotLive."""
        if caller.role != "agent":
            raise HostNotEnrolled("only agent certificates speak for hosts")
        try:
            host = await self.get_host(caller.principal)
        except (NotFound, InvalidInput):
            raise HostNotEnrolled(f"host {caller.principal!r} is not enrolled") from None
        until = accepted_until(host, caller.cert_sha256) if host["state"] == "enrolled" else None
        if until is None or self.revocations.is_revoked(caller.cert_sha256):
            why = "revoked" if host["state"] == "revoked" or until is not None else "removed or re-enrolled"
            raise HostNotEnrolled(f"host {caller.principal!r}: certificate not accepted ({why})")
        if until and until < time.time_ns():
            # A connection opened before: the next one must bring the renewed certificate.
            raise CertificateExpired(f"host {caller.principal!r}: certificate expired at {iso(until)}; "
                                     "reconnect with the renewed one")
        if need_lease:
            lease = await self.store.get(f"leases/{caller.principal}")
            rec: dict[str, Any] = decode_canonical(lease.value) if lease else {"state": "none", "expires_ns": 0}
            if rec["state"] != "live" or int(rec["expires_ns"]) < time.time_ns():
                raise LeaseNotLive(f"host {caller.principal!r} has no live custody lease")
        return host

    # -- certificates ---------------------------------------------------------------

    async def revoke_certificate(self, caller: Caller, *, host: str = "", fingerprint: str = "",
                                 certificate_pem: bytes = b"", reason: str = "",
                                 ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Revoke a host (all its certificates) or one certificate, by fingerprint or PEM; a
        host's certificate revokes its host. Returns the new revocations and the host, if any.
        Raises InvalidInput, NotFound (no such host)."""
        why = check_reason(reason)
        if sum(map(bool, (host, fingerprint, certificate_pem))) != 1:
            raise InvalidInput("name one certificate: a host, a fingerprint or a certificate")
        if not host:
            host, entry = await self.certs.subject(fingerprint=fingerprint, certificate_pem=certificate_pem,
                                                   reason=why, by=caller.principal)
            if not host:
                return await self.certs.revoke(caller, entry), None
        record, revoked = await self.revoke_host(caller, name=host, reason=why)
        return revoked, record

    def _close_stream(self, host: str, notice: str) -> None:
        if (q := self.streams.get(host)) is not None:
            q.put_nowait(("notice", notice))
            q.put_nowait(None)

    async def _close_revoked(self, entry: dict[str, Any]) -> None:
        """A certificate was revoked (on any replica): close its host's stream here, unless
        the host has been re-enrolled since with a certificate of its own."""
        host = entry.get("principal", "")
        if entry.get("role") != "agent" or host not in self.streams:
            return
        record = await self.get_host(host)  # the host of a stream here exists (hosts are never deleted)
        if record["state"] != "enrolled" or accepted_until(record, entry["fingerprint"]) is not None:
            self._close_stream(host, f"certificate not accepted: {entry['reason']}")

    # -- leases -------------------------------------------------------------------

    async def renew_lease(self, host: str) -> int | None:
        """Extend the host's lease by the TTL; None while it stays revoked.

        A lease revoked by an order stays revoked until the host acks that order:
        an agent that does not (stuck, cut off, compromised) gets no lease and
        fails closed at its deadline. A removed host's lease is never renewed.

        Renewals that arrive together are written together (``GroupCommit``): one read
        of their leases and one transaction per ``RENEWALS_PER_TXN``, each checking
        every lease it extends, so a revocation written meanwhile (on any replica)
        fails the transaction and each of its hosts is retried alone.
        """
        return await self._renewals.submit(host)

    async def _renew_batch(self, hosts: list[str]) -> dict[str, int | BaseException | None]:
        out: dict[str, int | BaseException | None] = {}
        entries = await self.store.get_many([f"leases/{h}" for h in hosts])
        plain: list[str] = []
        alone: list[str] = []
        for h in hosts:
            e = entries.get(f"leases/{h}")
            # A revoked lease needs its host and its order's ack read: renewed alone.
            (alone if e is not None and decode_canonical(e.value)["state"] == "revoked" else plain).append(h)
        expires = time.time_ns() + int(self.lease_ttl * 1e9)
        value = encode_canonical({"expires_ns": expires, "state": "live"})

        async def chunk(part: list[str]) -> None:
            keys = [f"leases/{h}" for h in part]
            checks = {k: entries[k].mod_revision if k in entries else 0 for k in keys}
            if await self.store.commit(Txn(checks=checks, puts=dict.fromkeys(keys, value))):
                out.update(dict.fromkeys(part, expires))
            else:
                alone.extend(part)  # one of them changed since the read: each on its own

        await asyncio.gather(*(chunk(plain[i:i + RENEWALS_PER_TXN])
                               for i in range(0, len(plain), RENEWALS_PER_TXN)))

        async def one(h: str) -> None:
            try:
                out[h] = await self._renew_one(h)
            except Exception as exc:  # noqa: BLE001 - that host's caller gets it
                out[h] = exc

        await asyncio.gather(*(one(h) for h in alone))
        return out

    async def _renew_one(self, host: str) -> int | None:
        key = f"leases/{host}"
        for _ in range(20):
            entry = await self.store.get(key)
            if entry is not None:
                rec = decode_canonical(entry.value)
                if rec["state"] == "revoked":
                    h = await self.get_host(host)
                    if h["state"] != "enrolled":
                        raise HostNotEnrolled(f"host {host!r} was removed")
                    order = rec.get("order", "")
                    if order and await self.store.get(f"orderacks/{order}/{host}") is None:
                        return None
            expires = time.time_ns() + int(self.lease_ttl * 1e9)
            value = encode_canonical({"expires_ns": expires, "state": "live"})
            if await self.store.commit(Txn(checks={key: entry.mod_revision if entry else 0}, puts={key: value})):
                return expires
        raise Conflict(f"could not renew the lease of {host!r}")

    async def revoke_leases(self, hosts: list[str], order_id: str = "") -> None:
        """Revoke the hosts' leases for ``order_id``. A revoked lease keeps its fail-closed
        deadline: no lease granted before now outlasts now + TTL (an earlier revocation's
        deadline stands), so until then a host that has not acked may still be halting
        on a live lease — through another replica, too — and is not yet fail-closed."""
        until = time.time_ns() + int(self.lease_ttl * 1e9)
        old = await self.store.get_many([f"leases/{h}" for h in hosts])
        puts = {}
        for h in hosts:
            entry = old.get(f"leases/{h}")
            rec = decode_canonical(entry.value) if entry is not None else {"state": "none"}
            deadline = min(int(rec["expires_ns"]), until) if rec["state"] == "revoked" else until
            puts[f"leases/{h}"] = encode_canonical({"expires_ns": deadline, "order": order_id, "state": "revoked"})
        await self.store.put_many(puts)

    async def sweep(self) -> list[str]:
        """Mark lapsed leases and their hosts' copies stale. Returns the hosts that lapsed now."""
        now = time.time_ns()
        lapsed = []
        # A lease written after this sweep expires a TTL from then at the earliest.
        soonest = now + int(min(self.lease_ttl, SWEEP_AT_LEAST_EVERY_S) * 1e9)
        for e in await self.store.range("leases/"):
            rec = decode_canonical(e.value)
            if rec["state"] != "live":
                continue
            if rec["expires_ns"] >= now:
                soonest = min(soonest, int(rec["expires_ns"]))
                continue
            host = e.key[len("leases/"):]
            ok = await self.store.commit(Txn(checks={e.key: e.mod_revision}, puts={e.key: encode_canonical(
                {"expires_ns": rec["expires_ns"], "state": "lapsed"})}))
            if ok:
                lapsed.append(host)
                await self._mark_host_copies(host, "stale")
                await self.audit.record(SYSTEM, "LeaseLapsed", f"host/{host}",
                                        f"lease expired at {rec['expires_ns']}")
        self._sweep_due_ns = soonest
        return lapsed

    async def sweep_if_due(self) -> list[str]:
        """``sweep`` once a live lease may have expired: the soonest expiry the last sweep saw,
        or a TTL after it (a renewal or a new lease runs a whole TTL from when it is written), so
        until then a sweep of the fleet's leases would find nothing. At least every
        SWEEP_AT_LEAST_EVERY_S all the same (another replica with a shorter TTL, a clock behind)."""
        if time.time_ns() < self._sweep_due_ns:
            return []
        return await self.sweep()

    async def flush_summaries(self) -> None:
        """Write the latest report summaries (last-report time, counts) in batches."""
        pending, self._summaries = self._summaries, {}
        if pending:
            await self.store.put_many({f"inventory/{h}": encode_canonical(v) for h, v in pending.items()})

    async def run_flusher(self, interval: float, stop: asyncio.Event) -> None:
        await every(interval, stop, self.flush_summaries, "writing report summaries", final=True)

    async def run_sweeper(self, interval: float, stop: asyncio.Event) -> None:
        await every(interval, stop, self.sweep_if_due, "lease sweep")

    # -- inventory ----------------------------------------------------------------

    async def _manifest_index(self) -> Any:
        marker = await self.read("meta/artifacts")
        rev = marker.mod_revision if marker else 0
        async with self._index_lock:
            if self._index is None or rev != self._index_rev:
                manifests, models = {}, {}
                for e in await self.store.range("artifacts/"):
                    rec = decode_canonical(e.value)
                    manifests[rec["id"]] = decode_manifest(rec["manifest"].encode())
                    models[rec["id"]] = rec["model"]
                self._index = (ManifestIndex(manifests), models)
                self._index_rev = rev
            return self._index

    def host_lock(self, host: str) -> asyncio.Lock:
        """Serializes the read-modify-write of one host's copy records: its inventory
        reports and its order acks (both arrive on that host's one stream, so on
        this replica)."""
        lock = self._host_locks.get(host)
        if lock is None:
            lock = self._host_locks[host] = asyncio.Lock()
        return lock

    async def ingest(self, host: str, inv: Any) -> dict[str, int]:
        """Match a report against every registered manifest; record copies and alerts."""
        async with self.host_lock(host):
            return await self._ingest(host, inv)

    async def _ingest(self, host: str, inv: Any) -> dict[str, int]:
        index, models = await self._manifest_index()
        # A delta is only a complete view if this replica holds the host's last full report.
        complete_view = bool(inv.full) or host in self._files
        files = {} if inv.full else dict(self._files.get(host, {}))
        for path in inv.removed_paths:
            files.pop(path, None)
        for f in inv.files:
            if (f.form not in ("plaintext", "ciphertext") or not re.fullmatch(r"[0-9a-f]{64}", f.sha256)
                    or not f.path.startswith("/") or "\x00" in f.path):
                continue  # a copy's location is cut from an absolute host path
            files[f.path] = {"form": f.form, "sha256": f.sha256, "size": int(f.size)}
        # Canary decoys as planted are no copies; one whose bytes changed stays, with an alert.
        decoy_alerts = self.screen_decoys(host, files, index) if self.screen_decoys is not None else []
        self._files[host] = files
        # An unchanged report (same files, processes and managed roots, same registry)
        # changes nothing but the report time: skip the matching and the writes.
        digest = hashlib.sha256(encode_canonical({
            "files": files, "index": self._index_rev, "managed": sorted(inv.managed_roots),
            "procs": sorted([p.pid, p.how, p.workload_id, sorted(p.paths)] for p in inv.processes),
        })).hexdigest()
        summary = {"at_ns": time.time_ns(), "files": len(files), "processes": len(inv.processes),
                   "problems": list(inv.problems)[:50], "guard": str(getattr(inv, "guard", ""))[:64]}
        last = self._digests.get(host)
        if last is not None and last[0] == digest and await self._records_digest(last[1]) == last[2]:
            # The same report, and the host's copy records as it left them (no lapse, ack,
            # completion or edit since, on any replica): nothing to write.
            self._summaries[host] = summary  # written by flush_summaries, batched
            return {"copies": -1, "alerts": 0, "unregistered": 0}
        records = [HashedFile(path, f["size"], f["sha256"], f["form"]) for path, f in files.items()]
        match = index.match(records)
        if self.on_inventory is not None:
            await self.on_inventory(host, inv)  # rules that need exact hashes (tampering)
        if self._policies_rev != self._index_rev:
            self._policies, self._policies_rev = {}, self._index_rev
        policies = self._policies

        async def policy(model: str) -> dict[str, Any]:
            if model not in policies:
                policies[model] = await self.registry.get_model(model)
            return policies[model]

        # Build every record first, read what exists in one round trip, then write in batches.
        found: list[tuple[str, dict[str, Any], bool]] = []  # (copy key, record, keeps residual)
        alerts: list[dict[str, Any]] = []
        alerts += decoy_alerts
        managed = {p.rstrip("/") for p in getattr(inv, "managed_roots", [])}
        for c in match.copies:
            if c.covered_by:
                continue  # its files are those of another artifact's complete copy here
            model = models.get(c.artifact_id, "")
            authorized = _under_any(c.location, managed) or _authorized(await policy(model), host, c.location)
            copy = new_copy(c.artifact_id, model, "host-path", f"{host}:{c.location}", host, "plaintext",
                            authorized=authorized, evidence=_copy_evidence(c),
                            state="present" if c.complete else "partial")
            copy["files_matched"], copy["files_total"] = len(c.files), c.total
            # Still there after a halt, whole or in part: it stays residual.
            found.append((f"copies/{c.artifact_id}/{copy['id']}", copy, True))
            if not authorized:
                how = " (found by content under other names)" if c.renamed else ""
                alerts.append(_alert("unauthorized-copy", host, model, c.artifact_id,
                                     f"{'complete' if c.complete else 'partial'} plaintext copy at {c.location}"
                                     f"{how} is outside the model's custody policy"))
        by_path = {f.path: f for f in match.files}
        for proc in inv.processes:
            arts: set[str] = set()
            for path in proc.paths:
                fm = by_path.get(path)
                if fm is not None:
                    arts |= {r.artifact_id for r in fm.refs}
            for aid in sorted(arts):
                model = models.get(aid, "")
                copy = new_copy(aid, model, "process", f"{host}:{proc.pid}", host, "loaded",
                                authorized=bool(proc.workload_id) or _authorized(await policy(model), host, ""),
                                evidence=f"pid {proc.pid} ({proc.user}) holds {len(proc.paths)} weight files "
                                         f"({proc.how}): {proc.cmdline[:200]}")
                found.append((f"copies/{aid}/{copy['id']}", copy, False))
        for u in filter(_named_like_weights, match.unregistered):
            alerts.append(_alert("unregistered-weights", host, "", "",
                                 f"{u.path} ({u.size} bytes, sha256 {u.sha256[:16]}) matches no registered artifact"))
        seen = {ck for ck, _, _ in found}
        # Copies this host reported before but not now are gone (only with a complete view).
        vanished: list[str] = []
        if complete_view:
            vanished = [k for k in await self.host_copy_keys(host) if k not in seen]
        index_keys = {ck: f"hostcopies/{host}/{ck[len('copies/'):]}" for ck in seen}
        existing = await self.store.get_many(
            [*seen, *index_keys.values(), *vanished, *(f"alerts/{a['id']}" for a in alerts)])
        puts: dict[str, bytes] = {}
        left: dict[str, bytes] = {}  # copy key -> its record as this report leaves it
        held_back = False  # a halt's evidence outranked this report: judge the next one in full
        for ck, copy, keeps_residual in found:
            old = existing.get(ck)
            if old is not None:
                prev = decode_canonical(old.value)
                copy["first_seen_ns"] = prev["first_seen_ns"]
                if keeps_residual and prev["state"] == "residual":
                    # Still there after a halt: it stays residual, with the halt's evidence.
                    copy["state"], copy["evidence"] = "residual", prev["evidence"]
                elif prev["state"] in ("wiped", "stopped") and \
                        time.time_ns() - int(prev.get("final_at_ns", 0)) < STALE_REPORT_NS:
                    # A report taken before the halt but arriving after its ack: the
                    # halt's evidence stands. Seen again later, the copy is really back.
                    held_back = True
                    continue
                if {**prev, "last_seen_ns": 0} == {**copy, "last_seen_ns": 0} and index_keys[ck] in existing:
                    # The record says what this report says (after a restart, or on another
                    # replica): not rewritten. last_seen_ns moves only when a copy changes,
                    # as with an unchanged report; the report's own time is its summary's.
                    left[ck] = old.value
                    continue
            left[ck] = puts[ck] = encode_canonical(copy)
            puts[index_keys[ck]] = b"{}"
        for ck in vanished:
            old = existing.get(ck)
            if old is not None:
                rec = dict(decode_canonical(old.value))
                # A halt's evidence (wiped, stopped) stands; anything else that vanished is gone.
                # (The index entry stays: an order's ack may still name this copy.)
                if rec["state"] not in ("gone", "wiped", "stopped"):
                    rec["state"] = "gone"
                    puts[ck] = encode_canonical(rec)
        for a in alerts:
            if f"alerts/{a['id']}" not in existing:
                puts[f"alerts/{a['id']}"] = encode_canonical(a)
        self._summaries[host] = summary
        await self._write_report(puts)
        if held_back:
            self._digests.pop(host, None)
        else:
            keys = sorted(seen)
            self._digests[host] = (digest, keys, _digest_of(left[k] for k in keys))
        return {"copies": len(seen), "alerts": len(alerts), "unregistered": len(match.unregistered)}

    # -- kernel-checked opens ------------------------------------------------------------------

    async def on_access(self, host: str, ev: Any) -> dict[str, Any] | None:
        """An agent saw a guarded open (an ``AccessEvent``): write its alert — ``open-denied``,
        ``weights-read`` or ``canary-opened`` — once per (host, pid, path, kind); a new pid is a
        new alert. Without a pid (inotify), once per path and 10 minutes. A malformed event, or one
        past the host's budget, is logged and changes nothing. Returns the new alert, or None."""
        rule = ACCESS_RULES.get(ev.kind)
        path = ev.path
        if rule is None or not path.startswith("/") or "\x00" in path or len(path) > 4096 or ev.pid < 0:
            log.warning("custody stream of %s: ignoring a malformed access event (kind %r, path %r)",
                        host, ev.kind[:20], path[:80])
            return None
        minute = int(time.time() // 60)
        at_minute, used = self._access_budget.get(host, (minute, 0))
        used = used + 1 if at_minute == minute else 1
        self._access_budget[host] = (minute, used)
        if used > ACCESS_ALERTS_PER_MINUTE:
            if used == ACCESS_ALERTS_PER_MINUTE + 1:
                log.error("host %s reports more than %d guarded opens a minute: the rest of this minute's are "
                          "dropped", host, ACCESS_ALERTS_PER_MINUTE)
            return None
        index, models = await self._manifest_index()
        artifact = ev.artifact_id if is_artifact_id(ev.artifact_id) else ""
        sha = ev.sha256 if re.fullmatch(r"[0-9a-f]{64}", ev.sha256) else ""
        if not artifact and sha:
            refs = index.refs(sha)
            artifact = refs[0][0] if refs else ""
        model = models.get(artifact, "")
        who = (f"pid {ev.pid}, exe {_clip(ev.exe, 300) or '?'} (sha256 {ev.exe_sha256[:16] or '?'}), "
               f"user {_clip(ev.user, 64) or '?'}, cgroup {_clip(ev.cgroup, 300) or '-'}, "
               f"container {_clip(ev.container_id, 64) or '-'}, cmdline {_clip(ev.cmdline, 300)!r}"
               if ev.pid else "an unknown process (inotify, degraded: no pid)")
        what = {"open-denied": "open refused (EPERM)", "weights-read": "registered weights opened",
                "canary-opened": f"canary {_clip(ev.canary_id, 64) or '?'} opened"}[rule]
        detail = (f"{what}: {_clip(path, 1024)} by {who}"
                  f"{'; sha256 ' + sha[:16] if sha else ''}; seen by {_clip(ev.mode, 32) or '?'}"
                  f"{': ' + _clip(ev.detail, 300) if ev.detail else ''}")
        bucket = "" if ev.pid else str(max(0, ev.at_unix_ns) // 600_000_000_000)
        aid = hashlib.sha256(f"access\x00{rule}\x00{host}\x00{ev.pid}\x00{path}\x00{bucket}".encode()).hexdigest()[:24]
        alert = {"artifact_id": artifact, "at_ns": time.time_ns(), "detail": detail, "host": host, "id": aid,
                 "model": model, "rule": rule, "severity": RULES[rule].severity, "state": "open"}
        key = f"alerts/{aid}"
        if not await self.store.commit(Txn(checks={key: 0}, puts={key: encode_canonical(alert)})):
            return None  # this open is already an alert
        log.warning("guarded open on %s: %s", host, detail[:300],
                    extra={"fields": {"alert": aid, "rule": rule, "host": host, "pid": ev.pid, "path": path[:300]}})
        if self.on_alert is not None:
            await self.on_alert(alert)
        return alert

    async def _records_digest(self, keys: list[str]) -> str | None:
        """The digest of the copy records at ``keys`` as stored now (None: one is missing)."""
        found = await asyncio.gather(*(self.read(k) for k in keys))
        if any(e is None for e in found):
            return None
        return _digest_of(e.value for e in found if e is not None)

    async def _write_report(self, puts: dict[str, bytes]) -> None:
        """One report's puts, committed with those of the other reports of this moment (up to
        REPORTS_PER_WRITE of them): a first-contact storm of small transactions becomes a few
        large ones. Not atomic as a whole, like ``Store.put_many``; an oversized value is this
        report's error alone."""
        if not puts:
            return
        check_puts(puts)
        self._report_seq += 1
        token = self._report_seq
        self._report_puts[token] = puts
        try:
            await self._report_writes.submit(token)
        finally:
            self._report_puts.pop(token, None)

    async def _write_reports(self, tokens: list[int]) -> dict[int, BaseException | None]:
        merged: dict[str, bytes] = {}
        for t in tokens:
            merged.update(self._report_puts.get(t, {}))
        await self.store.put_many(merged)
        return dict.fromkeys(tokens)

    async def host_copy_keys(self, host: str) -> list[str]:
        """Store keys (``copies/{artifact}/{id}``) of every copy ever seen on ``host``."""
        prefix = f"hostcopies/{host}/"
        return [f"copies/{e.key[len(prefix):]}" for e in await self.store.range(prefix)]

    async def _mark_host_copies(self, host: str, state: str) -> None:
        puts: dict[str, bytes] = {}
        for key, old in (await self.store.get_many(await self.host_copy_keys(host))).items():
            rec = dict(decode_canonical(old.value))
            if rec["state"] in ("present", "partial"):
                rec["state"] = state
                puts[key] = encode_canonical(rec)
        await self.store.put_many(puts)

    # -- streams ------------------------------------------------------------------

    def attach(self, host: str) -> asyncio.Queue[Any]:
        self.revocations.ensure_running()  # streams here are closed when their certificates are revoked
        old = self.streams.get(host)
        if old is not None:
            old.put_nowait(None)  # one stream per host: the newest wins
        q: asyncio.Queue[Any] = asyncio.Queue()
        self.streams[host] = q
        if self.on_attach is not None:
            self.on_attach(host)
        return q

    def detach(self, host: str, q: asyncio.Queue[Any]) -> None:
        if self.streams.get(host) is q:
            del self.streams[host]
        while not q.empty():  # what its writer never wrote is not owed any more
            if isinstance(q.get_nowait(), bytes):
                self.order_written()

    def send_order(self, host: str, q: asyncio.Queue[Any], data: bytes) -> bool:
        """Queue an order's serialized message on ``q`` if it is still ``host``'s stream here;
        counted in ``unwritten`` until its writer has written it (or the stream ended)."""
        if self.streams.get(host) is not q:
            return False
        self.unwritten += 1
        self._all_written.clear()
        q.put_nowait(data)
        return True

    def order_written(self) -> None:
        """A stream's writer has written (or failed to write) one order message."""
        self.unwritten -= 1
        if self.unwritten <= 0:
            self._all_written.set()

    async def orders_out(self, limit: float) -> None:
        """Wait until every order message queued here has been written, or ``limit`` seconds:
        bookkeeping (recording acks) yields the event loop to a halt still going out."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_written.wait(), limit)

    async def list_alerts(self, *, host: str = "", model: str = "") -> list[dict[str, Any]]:
        out = []
        for e in await self.store.range("alerts/"):
            a = dict(decode_canonical(e.value))
            if (host and a["host"] != host) or (model and a["model"] != model):
                continue
            out.append(a)
        return sorted(out, key=lambda a: a["at_ns"])


def _digest_of(values: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for v in values:
        h.update(len(v).to_bytes(8, "big") + v)
    return h.hexdigest()


def _clip(text: str, n: int) -> str:
    """An agent's string for an alert's detail: bounded, one line."""
    return " ".join(text.split())[:n]


def _authorized(model: dict[str, Any], host: str, path: str) -> bool:
    hosts = model.get("custody_hosts") or []
    paths = model.get("custody_paths") or []
    if not any(fnmatch.fnmatchcase(host, pat) for pat in hosts):
        return False
    return not paths or not path or any(fnmatch.fnmatchcase(path, pat) for pat in paths)


def _under_any(path: str, dirs: set[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def _listed(items: list[str], limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _copy_evidence(c: HostCopy) -> str:
    """What a copy's record says it is: n of m files, and which bytes sit under other names."""
    if c.complete:
        text = f"{len(c.files)} files match the manifest by SHA-256"
    else:
        text = (f"partial: {len(c.files)} of {c.total} files match by SHA-256: "
                f"{_listed([m for m, _ in c.files])}")
    if c.renamed:
        held = {h: m for m, h in c.files}
        prefix = c.location.rstrip("/") + "/"
        text += "; under other names: " + _listed(
            [f"{h[len(prefix):] if h.startswith(prefix) else h} holds {held[h]}" for h in c.renamed])
    return text


def _named_like_weights(u: UnregisteredWeights) -> bool:
    """Is an unmatched file worth an alert: named like weights, or as large as weights are?"""
    return u.size >= LARGE_UNREGISTERED or weight_like_name(u.path.rpartition("/")[2])


def _alert(rule: str, host: str, model: str, artifact: str, detail: str) -> dict[str, Any]:
    aid = hashlib.sha256(f"{rule}\x00{host}\x00{model}\x00{artifact}\x00{detail}".encode()).hexdigest()[:24]
    return {"artifact_id": artifact, "at_ns": time.time_ns(), "detail": detail, "host": host, "id": aid,
            "model": model, "rule": rule, "severity": "high" if rule == "unauthorized-copy" else "medium",
            "state": "open"}

