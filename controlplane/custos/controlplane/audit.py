"""The audit log on the Store: every change and its event in one transaction.

``AuditLog.mutate`` is the only way registry state changes. It reads the chain
head, lets the caller plan its writes, appends the event that describes them
and commits all of it as one transaction conditioned on the head not having
moved. If the event cannot be written, the change does not happen (fail
closed). Since every change moves the head, changes are serialized: a plan sees
a consistent store, which is what makes cycle and uniqueness checks safe with
several replicas.

Checkpoints form their own chain, serialized by ``audit/checkpoint-head``: one is
written before an append would leave more than ``policy.max_events`` events
uncovered, and the background loop signs the head often enough that no event
waits ``policy.max_age_s`` for one. A replica never signs over a checkpoint chain
that went back from what it saw (a rolled-back store).

Checkpoints are signed by a :class:`CheckpointSigner`: :class:`LocalCheckpointSigner` holds
an Ed25519 key in this process (a key file: development), the Transit one
(custos.controlplane.keys.transit_signer) asks Vault / OpenBao, where the key never leaves.
A signer that cannot sign (Transit down) delays checkpoints, never a change: the halt that
must be recorded while Vault is down is recorded, and a later checkpoint covers it.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos.controlplane.periodic import every
from custos.controlplane.store.base import Entry, Store, Txn
from custos.core.audit_chain import (
    CHECKPOINT_DOMAIN,
    DEFAULT_POLICY,
    GENESIS_HASH,
    CheckpointPolicy,
    checkpoint_digest,
    key_id,
    new_event,
    parse_stored,
)
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import BackendUnavailable, CustosError, IntegrityError
from custos.fs.private import write_private

log = logging.getLogger("custos.audit")

HEAD_KEY = "audit/head"
EVENTS_PREFIX = "audit/events/"
CHECKPOINTS_PREFIX = "audit/checkpoints/"
CHECKPOINT_HEAD_KEY = "audit/checkpoint-head"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: from the client certificate and the connection."""

    principal: str
    role: str
    host: str
    request_id: str
    cert_sha256: str = ""  # SHA-256 of the client certificate (DER), hex


SYSTEM = Caller(principal="custos-controlplane", role="system", host="local", request_id="")

current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("custos_caller")


@dataclass
class Plan:
    """What a mutation writes, and the outcome to record in its event."""

    txn: Txn = field(default_factory=Txn)
    result: str = "ok"


class CheckpointSigner(abc.ABC):
    """What signs audit checkpoints: Ed25519 over ``CHECKPOINT_DOMAIN || body`` (docs/audit.md)."""

    @abc.abstractmethod
    def public_key(self) -> Ed25519PublicKey:
        """The key checkpoints verify with. Raises BackendUnavailable if it is not known yet."""

    @abc.abstractmethod
    async def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message`` that verifies under :meth:`public_key`.

        Raises BackendUnavailable (cannot sign now) or IntegrityError (the signature does not
        verify under the published key: the signing key was replaced)."""


class LocalCheckpointSigner(CheckpointSigner):
    """An Ed25519 key held by this process: a key file on the control plane's disk (development)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    async def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class CheckpointUnsigned(BackendUnavailable):
    """The checkpoint signer cannot sign now; events keep being recorded and wait for a checkpoint."""


def event_key(seq: int) -> str:
    return f"{EVENTS_PREFIX}{seq:020d}"


def checkpoint_key(seq: int) -> str:
    return f"{CHECKPOINTS_PREFIX}{seq:020d}"


def _event(caller: Caller, action: str, obj: str, result: str, seq: int, prev: str) -> tuple[bytes, str]:
    """Event ``seq`` after the event hashed ``prev``: (its stored bytes, its hash)."""
    _, stored = new_event(seq=seq, prev=prev, time_ns=time.time_ns(), principal=caller.principal, role=caller.role,
                          host=caller.host, action=action, object=obj, result=result[:1000],
                          request_id=caller.request_id)
    return stored, parse_stored(stored)[1]


class AuditLog:
    def __init__(self, store: Store, signing_key: Ed25519PrivateKey | CheckpointSigner, *,
                 policy: CheckpointPolicy = DEFAULT_POLICY) -> None:
        self.store = store
        # Either kind has public_key(): what callers of ``signing_key`` use it for.
        self.signing_key = signing_key
        self.signer = signing_key if isinstance(signing_key, CheckpointSigner) else LocalCheckpointSigner(signing_key)
        self.policy = policy
        # The newest checkpoint (seq, digest) this replica read or wrote: the chain may only grow from it.
        self._seen_checkpoint = (0, GENESIS_HASH)
        # Every append moves the chain head, so concurrent appends from one replica
        # would only fight over it (retries fall from 275 to 37 hosts/s at 64 in
        # flight). Queue them here; the head check still orders replicas.
        self._local = asyncio.Lock()
        self._refused_logged = float("-inf")  # monotonic time of the last "checkpoint refused" line
        # Refusals recorded after their reply (record_soon): written in batches by one writer.
        self._soon: list[tuple[Caller, str, str, str]] = []
        self._soon_wake = asyncio.Event()
        self._soon_writer: asyncio.Task[None] | None = None
        self._soon_idle = asyncio.Event()
        self._soon_idle.set()

    @property
    def public_key_raw(self) -> bytes:
        """Raises BackendUnavailable if the signer does not know its key yet (Transit unreachable since start)."""
        return self.signer.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    async def _head(self) -> tuple[Entry | None, int, str]:
        entry = await self.store.get(HEAD_KEY)
        if entry is None:
            return None, 0, GENESIS_HASH
        head = decode_canonical(entry.value)
        return entry, int(head["seq"]), str(head["hash"])

    async def mutate(
        self,
        caller: Caller,
        action: str,
        obj: str,
        plan: Callable[[], Awaitable[tuple[Plan, T]]],
    ) -> T:
        """Run ``plan`` and commit its writes with an audit event, atomically.

        ``plan`` may raise a CustosError: the failure is then recorded as an
        event (no other write) and re-raised. Raises BackendUnavailable if the
        store keeps conflicting or is down.
        """
        failure: CustosError | None = None
        async with self._local:
            for attempt in range(200):
                head_entry, seq, prev = await self._head()
                if seq - self._seen_checkpoint[0] >= self.policy.max_events:
                    await self._checkpoint_before_append(seq, prev)
                try:
                    p, value = await plan()
                except CustosError as exc:
                    failure = exc
                    break
                if await self._commit(caller, action, obj, p, head_entry, seq, prev):
                    return value
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))  # noqa: S311
            else:
                raise BackendUnavailable("store too contended: could not commit after 200 attempts")
        await self.record(caller, action, obj, f"error: {type(failure).__name__}: {failure}")
        raise failure

    async def record(self, caller: Caller, action: str, obj: str, result: str) -> None:
        """Append an event with no other change (denials, failures)."""
        async def plan() -> tuple[Plan, None]:
            return Plan(result=result), None

        await self.mutate(caller, action, obj, plan)

    def record_soon(self, caller: Caller, action: str, obj: str, result: str) -> None:
        """Append an event that changes nothing and hands nothing out (a refusal) without waiting
        for it: a writer appends the queued events in batches, one transaction each, so a storm
        of refused unwraps at a halt neither waits for the chain nor fills it one commit at a time.
        ``flush`` waits until they are written."""
        self._soon.append((caller, action, obj, result))
        self._soon_idle.clear()
        self._soon_wake.set()
        if self._soon_writer is None or self._soon_writer.done():
            self._soon_writer = asyncio.get_running_loop().create_task(self._write_soon())

    async def flush(self) -> None:
        """Wait until every event of ``record_soon`` is in the chain."""
        if self._soon_writer is not None and not self._soon_writer.done():
            await self._soon_idle.wait()

    async def _write_soon(self) -> None:
        while True:
            if not self._soon:
                self._soon_idle.set()
                self._soon_wake.clear()
                await self._soon_wake.wait()
                continue
            try:
                await self._append_batch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the writer outlives a store outage
                log.error("writing %d refusal events to the audit chain failed, retrying: %s", len(self._soon), exc)
                await asyncio.sleep(0.5)

    async def _append_batch(self) -> None:
        async with self._local:
            for attempt in range(200):
                head_entry, seq, prev = await self._head()
                if seq - self._seen_checkpoint[0] >= self.policy.max_events:
                    await self._checkpoint_before_append(seq, prev)
                # No batch carries the chain past the checkpoint spacing.
                room = max(1, self.policy.max_events - (seq - self._seen_checkpoint[0]))
                batch = self._soon[:min(100, room)]
                txn = Txn()
                for caller, action, obj, result in batch:
                    seq += 1
                    stored, prev = _event(caller, action, obj, result, seq, prev)
                    txn.puts[event_key(seq)] = stored
                txn.checks[HEAD_KEY] = head_entry.mod_revision if head_entry else 0
                txn.puts[HEAD_KEY] = encode_canonical({"hash": prev, "seq": seq})
                if await self.store.commit(txn):
                    del self._soon[:len(batch)]
                    return
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))  # noqa: S311
            raise BackendUnavailable("store too contended: could not commit after 200 attempts")

    async def _commit(
        self,
        caller: Caller,
        action: str,
        obj: str,
        p: Plan,
        head_entry: Entry | None,
        seq: int,
        prev: str,
    ) -> bool:
        stored, new_hash = _event(caller, action, obj, p.result, seq + 1, prev)
        txn = p.txn
        txn.checks[HEAD_KEY] = head_entry.mod_revision if head_entry else 0
        txn.puts[event_key(seq + 1)] = stored
        txn.puts[HEAD_KEY] = encode_canonical({"hash": new_hash, "seq": seq + 1})
        return await self.store.commit(txn)

    async def list_events(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        start_after = event_key(after_seq) if after_seq else None
        entries = await self.store.range(EVENTS_PREFIX, start_after=start_after, limit=limit)
        return [(int(e.key[len(EVENTS_PREFIX):]), e.value) for e in entries]

    async def stored_events(self, page: int = 5000) -> list[bytes]:
        """Every stored event, oldest first, read in pages of ``page``."""
        stored: list[bytes] = []
        after = 0
        while True:
            rows = await self.list_events(after, page)
            stored += [v for _, v in rows]
            if len(rows) < page:
                return stored
            after = rows[-1][0]

    async def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        """Every stored checkpoint as (seq, body, signature), oldest first. A malformed one is served
        as its raw value with no signature, for the verifier to name."""
        out = []
        for e in await self.store.range(CHECKPOINTS_PREFIX):
            try:
                obj = decode_canonical(e.value)
                body, sig = bytes.fromhex(obj["body"]), bytes.fromhex(obj["signature"])
                seq = int(e.key[len(CHECKPOINTS_PREFIX):])
            except (CustosError, KeyError, TypeError, ValueError):
                body, sig, seq = e.value, b"", 0
            out.append((seq, body, sig))
        return out

    async def checkpoint(self) -> int | None:
        """Sign the current head if no checkpoint covers it yet. Returns its seq (None: nothing new,
        or another replica signed first). Raises IntegrityError if the store went back from what this
        replica saw (it refuses to sign over that), BackendUnavailable if the store is down."""
        cp_entry, cp_seq, cp_digest = await self._checkpoint_head()
        _, seq, head_hash = await self._head()
        if seq < cp_seq:
            raise IntegrityError(f"the audit head (event {seq}) is behind the newest checkpoint (event {cp_seq}): "
                                 "events were deleted; refusing to sign")
        if seq == cp_seq:
            return None
        return seq if await self._write_checkpoint(cp_entry, cp_seq, cp_digest, seq, head_hash) else None

    async def _checkpoint_before_append(self, seq: int, head_hash: str) -> None:
        """Checkpoint event ``seq`` if one more event would leave more than ``max_events`` uncovered.
        Never blocks the append it precedes, except by a store that is down."""
        for _ in range(3):
            try:
                cp_entry, cp_seq, cp_digest = await self._checkpoint_head()
                if seq - cp_seq < self.policy.max_events or seq <= cp_seq:
                    return
                if await self._write_checkpoint(cp_entry, cp_seq, cp_digest, seq, head_hash):
                    return
            except (IntegrityError, CheckpointUnsigned) as exc:
                # The change goes ahead without a checkpoint: refusing it would keep a halt from
                # being recorded while the signer (Transit) is down. The gap is visible to verifiers.
                # Logged every 30 s, not at every append of an outage.
                if time.monotonic() - self._refused_logged >= 30:
                    self._refused_logged = time.monotonic()
                    log.error("audit checkpoint refused: %s", exc)
                return

    async def _checkpoint_head(self) -> tuple[Entry | None, int, str]:
        """The newest checkpoint: (its pointer's entry, seq, digest). Raises IntegrityError if the
        chain went back from what this replica saw."""
        entry = await self.store.get(CHECKPOINT_HEAD_KEY)
        pointer = _parse_pointer(entry.value) if entry is not None else None
        if pointer is None:
            # A log from before checkpoints were chained, or a lost pointer: the newest stored one.
            stored = [c for c in await self.checkpoints() if c[0]]
            pointer = (stored[-1][0], checkpoint_digest(stored[-1][1])) if stored else (0, GENESIS_HASH)
        seq, digest = pointer
        seen_seq, seen_digest = self._seen_checkpoint
        if seq < seen_seq or (seq == seen_seq and digest != seen_digest):
            raise IntegrityError(f"audit checkpoints went back: this control plane saw checkpoint {seen_seq}, "
                                 f"the store holds {seq} as the newest; refusing to sign over a rolled-back "
                                 "or rewritten log")
        self._seen_checkpoint = (seq, digest)
        return entry, seq, digest

    async def _write_checkpoint(self, cp_entry: Entry | None, cp_seq: int, cp_digest: str, seq: int,
                                head_hash: str) -> bool:
        """Sign event ``seq`` after the checkpoint at ``cp_seq``; False if another replica moved the
        checkpoint chain first (conditioned on its pointer, so the chain never forks)."""
        body, sig = await self._sign(seq=seq, head_hash=head_hash, prev_seq=cp_seq, prev=cp_digest)
        digest = checkpoint_digest(body)
        key = checkpoint_key(seq)
        txn = Txn(checks={key: 0, CHECKPOINT_HEAD_KEY: cp_entry.mod_revision if cp_entry else 0},
                  puts={key: encode_canonical({"body": body.hex(), "signature": sig.hex()}),
                        CHECKPOINT_HEAD_KEY: encode_canonical({"digest": digest, "seq": seq})})
        if not await self.store.commit(txn):
            return False
        self._seen_checkpoint = (seq, digest)
        return True

    async def _sign(self, *, seq: int, head_hash: str, prev_seq: int, prev: str) -> tuple[bytes, bytes]:
        """(body, signature) of a checkpoint; the body as custos.core.audit_chain.sign_checkpoint makes it.
        Raises CheckpointUnsigned if the signer cannot sign now, IntegrityError if its key is not the published one."""
        try:
            public_key = self.signer.public_key()
            body = encode_canonical({"hash": head_hash, "key_id": key_id(public_key), "prev": prev,
                                     "prev_seq": prev_seq, "seq": seq, "time_ns": time.time_ns()})
            return body, await self.signer.sign(CHECKPOINT_DOMAIN + body)
        except IntegrityError:
            raise
        except CustosError as exc:  # unreachable, refused, misconfigured: no checkpoint now
            raise CheckpointUnsigned(f"cannot sign an audit checkpoint now: {exc}") from exc

    async def run_checkpoints(self, interval: float, stop: asyncio.Event) -> None:
        """Checkpoint every ``interval`` s, and at least three times per ``policy.max_age_s``."""
        await every(min(interval, self.policy.max_age_s / 3), stop, self.checkpoint, "audit checkpoint")


def _parse_pointer(value: bytes) -> tuple[int, str] | None:
    try:
        obj = decode_canonical(value)
        return int(obj["seq"]), str(obj["digest"])
    except (CustosError, KeyError, TypeError, ValueError):
        return None


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The control plane's checkpoint key (PKCS#8 PEM, 0600). Writes path.pub beside it."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise CustosError(f"{path}: not an Ed25519 private key")
    else:

        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), exclusive=True)
    pub = path.with_suffix(".pub")
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    if not pub.exists() or pub.read_bytes() != pub_pem:
        write_private(pub, pub_pem, mode=0o644)
    return key


def event_fields(stored: bytes) -> dict[str, Any]:
    record, h = parse_stored(stored)
    return {**record, "hash": h}
