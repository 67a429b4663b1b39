"""Acks: agents' acks of orders, stored per host, and their evidence applied to that
host's copies.

Each ack's signed evidence (custos.core.evidence) is checked on arrival: against the CA
that issues agent certificates, and the certificate must be one the host's record
accepts (its enrolled one, or the one it renewed from) and not revoked. The evidence,
its signature and the certificate are stored with the ack, with whether they verified
and why not; an unsigned or badly signed ack is recorded as such, and the signed report
does not count it as evidence (its copies are still brought to a final state: the ack
came over the host's own mTLS stream).

Store keys:
    orderacks/{id}/{host}       an agent's ack with evidence
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from custos.controlplane.certificates import accepted_until
from custos.controlplane.custody import Custody
from custos.controlplane.orders.book import OrderBook
from custos.controlplane.orders.fleet import copy_states
from custos.controlplane.store.base import MAX_TXN_OPS, Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.evidence import AckCheck, load_ca_certificates, verify_ack
from custos.core.orders import Order
from custos.errors import CustosError

log = logging.getLogger("custos.orders")

ACK_BATCH = 512  # acks recorded together: one read and a few transactions for them all
ACK_DEFER_MAX_S = 2.0  # longest an ack waits for a broadcast still going out before it is recorded


def acks_prefix(oid: str) -> str:
    """Where the acks of order ``oid`` are stored."""
    return f"orderacks/{oid}/"


def ack_key(oid: str, host: str) -> str:
    """Where the ack of ``host`` for order ``oid`` is stored."""
    return acks_prefix(oid) + host


class Acks:
    """Records acks through one worker; hooks Custody's ``on_ack``.

    Acks are evidence, not commands: they are stored per host (the completion
    event in the audit chain commits to all of them by digest) rather than each
    appending to the serialized audit chain, so 10,000 agents can ack within seconds.
    """

    def __init__(self, store: Store, custody: Custody, book: OrderBook, *, agent_ca_pem: bytes = b"") -> None:
        self.store = store
        self.custody = custody
        self.book = book
        self._queue: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue()
        self.agent_cas = load_ca_certificates(agent_ca_pem) if agent_ca_pem else []

    async def check_evidence(self, host: str, oid: str, ack: Any,
                             record: dict[str, Any] | None = None) -> AckCheck:
        """The ack's signed evidence checked against the CA, the host's accepted certificates
        (``record``: the host's record, if already read) and the revocation list. Never raises
        for a bad ack."""
        check = verify_ack(bytes(ack.evidence), bytes(ack.evidence_signature), bytes(ack.host_certificate),
                           self.agent_cas, host=host, order_id=oid)
        if not self.agent_cas and ack.evidence:
            return AckCheck(check.evidence, "no CA configured to check agent certificates against")
        if not check or check.evidence is None:
            return check
        fp = check.evidence.cert_sha256
        if record is None:
            try:
                record = await self.custody.get_host(host)
            except CustosError:
                return AckCheck(check.evidence, "the host is not known to the control plane")
        if accepted_until(record, fp) is None:
            return AckCheck(check.evidence, "signed with a certificate the host's record does not accept")
        if self.custody.revocations.is_revoked(fp):
            return AckCheck(check.evidence, "signed with a revoked certificate")
        return check

    async def enqueue(self, host: str, ack: Any, received_ns: int) -> None:
        """Called from stream readers: acks are recorded by one worker, so a flood
        of 10,000 acks never starves the RPCs (like refused unwraps) behind it."""
        self._queue.put_nowait((host, ack, received_ns))

    async def run_worker(self, stop: asyncio.Event) -> None:
        """Record queued acks until ``stop``, as many at a time as have queued (up to
        ACK_BATCH): one read and one transaction per batch, not per ack. A failing batch is
        logged, never fatal."""
        while not stop.is_set():
            batch = [await self._queue.get()]
            # Orders out first: while a halt is still being written to streams here, its acks
            # wait (their arrival time is already taken) rather than take the loop from it.
            await self.custody.orders_out(ACK_DEFER_MAX_S)
            while len(batch) < ACK_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.record_many(batch)
            except Exception:
                log.exception("recording %d acks failed", len(batch))

    async def record(self, host: str, ack: Any, received_ns: int = 0) -> None:
        """Store an agent's ack (the first of a host stands) and apply its evidence
        to that host's copies. An ack for an unknown order is logged and dropped."""
        await self.record_many([(host, ack, received_ns)])

    async def record_many(self, items: list[tuple[str, Any, int]]) -> None:
        """Store many acks: per order, the first ack of each host stands (in the batch and in
        the Store), written in as few transactions as the Store allows, each conditioned on
        no ack of those hosts existing yet; then their evidence is applied to the copies."""
        asked: dict[str, dict[str, Any] | None] = {}  # order id as acked -> its record
        records: dict[str, dict[str, Any]] = {}  # by full id
        by_order: dict[str, dict[str, tuple[Any, int]]] = {}
        for host, ack, received in items:
            oid = ack.order_id
            if oid not in asked:
                try:
                    asked[oid] = await self.book.get(oid)
                except CustosError:
                    log.warning("ack from %s for unknown order %s", host, oid[:16])
                    asked[oid] = None
            rec = asked[oid]
            if rec is not None:
                records[rec["id"]] = rec
                by_order.setdefault(rec["id"], {}).setdefault(host, (ack, received or time.time_ns()))
        for oid, acks in by_order.items():
            existing = await self.store.get_many([ack_key(oid, h) for h in acks])
            fresh = {h: a for h, a in acks.items() if ack_key(oid, h) not in existing}
            signed = [h for h, (ack, _) in fresh.items() if ack.evidence]
            hosts = {k[len("hosts/"):]: dict(decode_canonical(e.value))
                     for k, e in (await self.store.get_many([f"hosts/{h}" for h in signed])).items()}
            values: dict[str, dict[str, Any]] = {}
            for h, (ack, received) in fresh.items():
                # A host missing from the read is looked up (and named unknown) by check_evidence.
                check = await self.check_evidence(h, oid, ack, hosts.get(h))
                values[h] = self._ack_value(h, oid, ack, received, check)
            unverified = sorted(h for h, v in values.items() if not v["evidence_verified"])
            if unverified:  # one line per batch, not one per ack of a fleet
                log.warning("%d acks without verified evidence", len(unverified), extra={"fields": {
                    "order_id": oid[:16], "hosts": unverified[:20],
                    "problem": values[unverified[0]]["evidence_problem"][:200]}})
            stored = await self._commit_new(oid, values)
            await self._apply_many(records[oid], {h: values[h] for h in stored})

    def _ack_value(self, host: str, oid: str, ack: Any, now: int, check: AckCheck) -> dict[str, Any]:
        """What is stored of an ack: what the host signed if it verified, else its fields, bounded."""
        ev = check.evidence if check else None
        if ev is not None:  # what the host signed, not the unsigned fields beside it
            value: dict[str, Any] = {
                "done_ns": ev.done_ns, "host": host, "outcome": ev.outcome, "paths_wiped": list(ev.paths_wiped),
                "pids_stopped": list(ev.pids_stopped), "reason": ev.reason, "received_ns": ev.received_ns,
                "recorded_ns": now, "remaining": list(ev.remaining), "verified": ev.verified,
                "would_stop": list(ev.would_stop)}
        else:
            value = {
                "done_ns": ack.done_unix_ns or now, "host": host, "outcome": ack.outcome[:32],
                "paths_wiped": list(ack.paths_wiped)[:10_000], "pids_stopped": list(ack.pids_stopped)[:10_000],
                "reason": ack.reason[:2000], "received_ns": ack.received_unix_ns, "recorded_ns": now,
                "remaining": list(ack.remaining)[:1000], "verified": bool(ack.verified),
                "would_stop": list(ack.would_stop)[:1000],
            }
        # Evidence that decodes is kept, verified or not (for the record); undecodable bytes are not.
        kept = check.evidence is not None
        value.update(evidence=bytes(ack.evidence).decode() if kept else "",
                     evidence_signature=bytes(ack.evidence_signature).hex()[:1024] if kept else "",
                     host_certificate=base64.b64encode(bytes(ack.host_certificate)[:16384]).decode() if kept else "",
                     evidence_verified=bool(check), evidence_problem=check.problem[:500])
        return value

    async def _commit_new(self, oid: str, values: dict[str, dict[str, Any]]) -> list[str]:
        """Write the acks of hosts that have none yet; the hosts whose ack this call stored.
        A chunk whose condition fails (another replica stored one meanwhile) goes one by one."""
        items = [(h, ack_key(oid, h), encode_canonical(v)) for h, v in values.items()]
        stored: list[str] = []
        step = MAX_TXN_OPS // 2 - 5  # a check and a put per ack
        for i in range(0, len(items), step):
            chunk = items[i:i + step]
            if await self.store.commit(Txn(checks={k: 0 for _, k, _ in chunk}, puts={k: v for _, k, v in chunk})):
                stored += [h for h, _, _ in chunk]
                continue
            for h, k, v in chunk:
                if await self.store.commit(Txn(checks={k: 0}, puts={k: v})):
                    stored.append(h)
        return stored

    async def _apply_many(self, record: dict[str, Any], acks: dict[str, dict[str, Any]]) -> None:
        """Apply the acks to the copies of the order's artifacts on their hosts: the copies are
        found by one read per artifact, then each host's are read again and written under its
        lock (its reports may be being ingested)."""
        order = Order.decode(record["body"].encode())
        live = {h for h, a in acks.items() if a["outcome"] not in ("dry-run", "lifted")}
        if not live:
            return  # nothing was stopped: copies keep their state; the report shows would_stop
        keys: dict[str, list[str]] = {}
        for c in await copy_states(self.store, order.artifacts):
            if c["host"] in live and c["location_kind"] != "object-store":
                keys.setdefault(c["host"], []).append(f"copies/{c['artifact_id']}/{c['id']}")
        for host, host_keys in keys.items():
            async with self.custody.host_lock(host):
                await self._apply_to_copies(order, host_keys, acks[host])

    async def _apply_to_copies(self, order: Order, keys: list[str], ack: dict[str, Any]) -> None:
        real = set(order.models)
        wiped = set(ack["paths_wiped"])
        pids = {str(p) for p in ack["pids_stopped"]}
        puts: dict[str, bytes] = {}
        for key, entry in (await self.store.get_many(keys)).items():
            c = dict(decode_canonical(entry.value))
            if c["location_kind"] == "object-store" or c["model"] not in real:
                continue
            if c["state"] in ("wiped", "stopped"):
                continue
            where = c["location"].split(":", 1)[1]
            stopped = c["location_kind"] == "process" and where in pids
            was_wiped = c["location_kind"] == "host-path" and (
                where in wiped or any(w.startswith(where + "/") for w in wiped))
            if c["state"] == "gone" and not (stopped or was_wiped):
                continue  # vanished before the ack, and the ack does not claim it
            if stopped:
                c["state"], ev = "stopped", f"pid {where} stopped"
            elif was_wiped:
                c["state"], ev = "wiped", f"plaintext at {where} wiped"
            elif ack["outcome"] in ("halted", "destroyed", "already-executed"):
                why = "; ".join(ack["remaining"])[:500] or "no reason given"
                c["state"], ev = "residual", f"not stopped or wiped by the agent: {why}"
            else:
                c["state"], ev = "residual", f"agent outcome {ack['outcome']}: {ack['reason'][:300]}"
            c["evidence"] = f"order {order.id[:16]}: {ev}"
            c["final_at_ns"] = time.time_ns()
            puts[key] = encode_canonical(c)
        await self.custody.store.put_many(puts)
