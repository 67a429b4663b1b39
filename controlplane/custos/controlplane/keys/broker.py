"""Key brokering for encrypted push and pull (promises 1 and 3).

The control plane hands a client the plaintext data key of one artifact, wrapped
by the model's Transit key that never leaves Vault, and records every handout in
the audit log. It never sees a weight: it checks ciphertext objects only by size
and header. Keys are unwrapped only while the model is active; a halted model's
unwraps are refused here and, once its Transit key is suspended, by Vault too.

A key release is linearized with the halt. The checks (model active; for an
agent, host enrolled with a live lease) read Store records; the key comes from
the provider; then the audit event of the release commits in a transaction
conditioned on those records: the model and host records unchanged since the
check, the lease still live. A halt committed in between rewrites the model
record, so the release is refused (audited) and the key zeroized: no key leaves
whose release is recorded after the halt.

Store keys: ``uploads/{artifact}`` — a push in progress: model, parents,
manifest and the wrapped data key, so an interrupted push resumes with the same
key. It is deleted in the same transaction that registers the artifact as stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from custos.blobs.base import BlobStore
from custos.blobs.url import OBJECT_PREFIX, object_key
from custos.controlplane.access import AccessService, GrantUse
from custos.controlplane.audit import Caller, Plan
from custos.controlplane.custody import Custody
from custos.controlplane.keys.base import DataKey, KeyProvider, zeroize
from custos.controlplane.registry import ArtifactRecord, Registry, new_copy
from custos.controlplane.store.base import Entry, Txn
from custos.core import chunked
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.manifest import decode_manifest
from custos.core.orders import Order
from custos.errors import Conflict, CustosError, FailedPrecondition, IntegrityError, NotFound

K = TypeVar("K", bytearray, DataKey)


class ModelNotActive(FailedPrecondition):
    """The model is halted or destroyed: no data key is handed out."""


class ReleaseRaced(FailedPrecondition):
    """A record a key release was checked against changed before the release committed."""


@dataclass(frozen=True, slots=True)
class ReleaseBasis:
    """The Store records a data-key release was checked against: key -> mod_revision.

    ``unchanged``: must not move between the check and the release (the model, the
    host record, the access policies and the grant). ``live``: may move (the lease, which every renewal
    rewrites), but then the checks run again at the release. Either way the release
    commits only if each record is still at the revision its last check read.
    ``until_ns``: when what was checked stops holding by itself (the lease expires).
    """

    unchanged: dict[str, int] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    until_ns: int | None = None
    grant: GrantUse | None = None  # the access grant the release is under, if one was needed

    def __or__(self, other: ReleaseBasis) -> ReleaseBasis:
        ends = [t for t in (self.until_ns, other.until_ns) if t is not None]
        return ReleaseBasis({**self.unchanged, **other.unchanged}, {**self.live, **other.live},
                            min(ends) if ends else None, self.grant or other.grant)

    def moved_since(self, earlier: ReleaseBasis) -> list[str]:
        """The ``unchanged`` records of ``earlier`` that are at another revision here."""
        return sorted(k for k, rev in earlier.unchanged.items() if self.unchanged.get(k) != rev)

    def txn_checks(self) -> dict[str, int]:
        return {**self.live, **self.unchanged}


def _revision(entry: Entry | None) -> int:
    return entry.mod_revision if entry is not None else 0


def _zeroize_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        out = task.result()
        if isinstance(out, DataKey):
            out.zeroize()
        else:
            zeroize(out)


async def _key_from(fn: Callable[..., K], *args: Any) -> K:
    """Run the provider call ``fn`` in a thread. If the caller is cancelled meanwhile,
    the key the thread still returns is zeroized, not dropped."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_zeroize_result)
        raise


class KeyBroker:
    def __init__(self, registry: Registry, keys: KeyProvider, blobs: BlobStore, blob_url: str,
                 custody: Custody | None = None, access: AccessService | None = None) -> None:
        self.custody = custody
        self.access = access
        self.registry = registry
        self.keys = keys
        self.blobs = blobs
        self.blob_url = blob_url
        self._models_of: dict[str, tuple[str, str]] = {}  # artifact as asked for -> (its id, its model)
        self._states: dict[str, tuple[int, str]] = {}  # model -> (sequence, state) of the newest order

    # -- what executed orders say, for refusing fast --------------------------------

    def learn_order(self, order: Order) -> None:
        """An order executed (on any replica): the states it gives its models, newest order first,
        for ``halted_hint``."""
        # As the order book has it (orders.book.model_states); a lift never clears a destroy, as the
        # Store's check behind this one refuses what was destroyed whatever this says.
        state = {"lift": "active", "destroy": "destroyed"}.get(order.action, "halted")
        for model in order.models:
            if self._states.get(model, (0, ""))[0] < order.sequence:
                self._states[model] = (order.sequence, state)

    def halted_hint(self, artifact: str) -> tuple[str, ModelNotActive] | None:
        """(artifact id, the refusal) if an executed order known here halted or destroyed the
        model of ``artifact`` (as named before), else None: then the Store decides."""
        known = self._models_of.get(artifact)
        if known is None:
            return None
        aid, model = known
        state = self._states.get(model, (0, "active"))[1]
        if state == "active":
            return None
        return aid, ModelNotActive(f"model {model!r} is {state}: data keys are refused")

    # -- the checks a release depends on -------------------------------------------

    async def _host_basis(self, caller: Caller) -> ReleaseBasis:
        """For an agent: its host is enrolled and its lease live. Raises HostNotEnrolled, LeaseNotLive."""
        if caller.role != "agent" or self.custody is None:
            return ReleaseBasis()
        store = self.registry.store
        host_key, lease_key = f"hosts/{caller.principal}", f"leases/{caller.principal}"
        # Revisions first, then the check: a record that moves after these reads
        # fails the release's commit, so what the check read is what commits.
        read = await store.get_many([host_key, lease_key])
        await self.custody.check_agent(caller, need_lease=True)
        host, lease = read.get(host_key), read.get(lease_key)
        # No lease at the first read but a live one at the check's: already expired
        # here, so the release checks again.
        until = int(decode_canonical(lease.value)["expires_ns"]) if lease is not None else 0
        return ReleaseBasis(unchanged={host_key: _revision(host)}, live={lease_key: _revision(lease)},
                            until_ns=until)

    async def _model_basis(self, name: str, artifact: ArtifactRecord | None = None,
                           caller: Caller | None = None) -> ReleaseBasis:
        """The model is active; for an unwrap of ``artifact``, an access grant covers ``caller``
        (custos.controlplane.access). Raises NotFound, ModelNotActive, NoGrant."""
        key = f"models/{name}"
        entry = await self.registry.store.get(key)
        if entry is None:
            raise NotFound(f"model {name!r} not found")
        record = decode_canonical(entry.value)
        state = record["state"]
        if state != "active":
            raise ModelNotActive(f"model {name!r} is {state}: data keys are refused")
        basis = ReleaseBasis(unchanged={key: entry.mod_revision})
        if artifact is None or caller is None or self.access is None:
            return basis
        deps, grant = await self.access.release_grant(caller, artifact, record)
        return basis | ReleaseBasis(unchanged=deps, until_ns=grant.not_after_ns if grant else None,
                                    grant=grant)

    async def _basis(self, caller: Caller, model: str, artifact: ArtifactRecord | None = None) -> ReleaseBasis:
        """Everything a release of a data key of ``model`` (for an unwrap: of ``artifact``) to
        ``caller`` needs, checked now. Reads only (it runs inside release plans). Raises like
        the checks it runs."""
        return await self._host_basis(caller) | await self._model_basis(model, artifact, caller)

    async def _checked(self, caller: Caller, action: str, obj: str,
                       check: Awaitable[ReleaseBasis]) -> ReleaseBasis:
        """``check``'s basis; a refusal is audited and re-raised."""
        try:
            return await check
        except ModelNotActive as exc:
            # A halted model's refusal hands nothing out: it is answered at once and audited just
            # after, in batches, so the storm of retries a halt causes never queues on the chain.
            self.registry.audit.record_soon(caller, action, obj, f"error: {type(exc).__name__}: {exc}")
            raise
        except CustosError as exc:
            await self.registry.audit.record(caller, action, obj, f"error: {type(exc).__name__}: {exc}")
            raise

    def _release_checks(self, caller: Caller, model: str, basis: ReleaseBasis,
                        artifact: ArtifactRecord | None = None) -> Callable[[], Awaitable[ReleaseBasis]]:
        """What a release plan conditions its commit on, one call per attempt.

        First attempt: ``basis`` itself, unread (unless it expired): the commit holds
        only if every record is still at the revision the checks read, so their
        answer stands. After a failed commit: the checks again, so a refusal names
        its cause. Raises ModelNotActive, HostNotEnrolled, LeaseNotLive, ReleaseRaced
        (an ``unchanged`` record moved).
        """
        first = True

        async def checks() -> ReleaseBasis:
            nonlocal first
            if first and (basis.until_ns is None or time.time_ns() < basis.until_ns):
                first = False
                return basis
            now = await self._basis(caller, model, artifact)
            moved = now.moved_since(basis)
            if moved:
                raise ReleaseRaced(f"{', '.join(moved)} changed while the data key was being released; ask again")
            return now
        return checks

    async def create_data_key(
        self, caller: Caller, *, model: str, manifest_bytes: bytes, parents: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """Start or resume a push. Returns {artifact_id, data_key (bytearray) or None,
        resumed, already_stored}. Raises like register_artifact, and ModelNotActive,
        ReleaseRaced (the model changed while its key was being released)."""
        _, aid, _ = await self.registry.check_artifact_request(model, manifest_bytes, parents)
        obj = f"artifact/{aid}"
        basis = await self._checked(caller, "CreateDataKey", obj, self._basis(caller, model))
        existing = await self.registry.store.get(f"artifacts/{aid}")
        if existing is not None and decode_canonical(existing.value).get("storage"):
            return {"artifact_id": aid, "data_key": None, "resumed": False, "already_stored": True}
        pending = await self.registry.store.get(f"uploads/{aid}")
        if pending is not None:
            rec = decode_canonical(pending.value)
            if rec["model"] != model:
                raise Conflict(f"a push of {aid[:12]} for model {rec['model']!r} is in progress")
            key = await self._hand_out(caller, "CreateDataKey", obj, model, rec["wrapped_key"], aid,
                                       "resumed", basis)
            return {"artifact_id": aid, "data_key": key, "resumed": True, "already_stored": False}

        await asyncio.to_thread(self.keys.ensure_key, model)
        dk = await _key_from(self.keys.generate_data_key, model, aid.encode())

        checks = self._release_checks(caller, model, basis)

        async def plan() -> tuple[Plan, None]:
            now = await checks()
            if await self.registry.store.get(f"uploads/{aid}") is not None:
                raise Conflict(f"a push of {aid[:12]} started concurrently; run the push again")
            record = {
                "at_ns": time.time_ns(), "by": caller.principal, "manifest": manifest_bytes.decode(),
                "model": model, "parents": sorted([list(p) for p in parents]),
                "wrapped_key": dk.wrapped,
            }
            return Plan(Txn(checks={**now.txn_checks(), f"uploads/{aid}": 0},
                            puts={f"uploads/{aid}": encode_canonical(record)})), None

        try:
            await self.registry.audit.mutate(caller, "CreateDataKey", obj, plan)
        except BaseException:
            dk.zeroize()
            raise
        return {"artifact_id": aid, "data_key": dk.plaintext, "resumed": False, "already_stored": False}

    async def _hand_out(self, caller: Caller, action: str, obj: str, model: str, wrapped: str,
                        aid: str, note: str, basis: ReleaseBasis,
                        artifact: ArtifactRecord | None = None) -> bytearray:
        """Unwrap ``wrapped`` and release it: the release's audit event commits only if
        ``basis`` still holds (see ``_release_checks``); else the key is zeroized and the
        refusal audited. Raises the provider's errors and those of ``_release_checks``."""
        try:
            key = await _key_from(self.keys.unwrap, model, wrapped, aid.encode())
        except CustosError as exc:
            await self.registry.audit.record(caller, action, obj, f"error: {type(exc).__name__}: {exc}")
            raise

        checks = self._release_checks(caller, model, basis, artifact)

        async def plan() -> tuple[Plan, None]:
            now = await checks()
            grant = f"; grant {now.grant.id[:16]}" if now.grant is not None else ""
            return Plan(Txn(checks=now.txn_checks()), f"ok: {note}{grant}"), None

        try:
            # Fail closed: no key leaves without its audit event, committed with the checks.
            await self.registry.audit.mutate(caller, action, obj, plan)
        except BaseException:
            zeroize(key)
            raise
        return key

    async def register_stored(self, caller: Caller, *, artifact_id: str) -> tuple[ArtifactRecord, bool]:
        """Register a pushed artifact as stored once every object is in place.

        Raises NotFound (no push in progress), FailedPrecondition (an object is
        missing or has the wrong size), IntegrityError (a header does not match
        the manifest).
        """
        aid = artifact_id
        pending = await self.registry.store.get(f"uploads/{aid}")
        if pending is None:
            existing = await self.registry.store.get(f"artifacts/{aid}")
            if existing is not None and decode_canonical(existing.value).get("storage"):
                return await self.registry.get_artifact(aid), False
            raise NotFound(f"no push of artifact {aid[:12]} in progress")
        up = decode_canonical(pending.value)
        manifest_bytes = up["manifest"].encode()

        manifest = decode_manifest(manifest_bytes)
        sem = asyncio.Semaphore(16)

        async def check(index: int) -> dict[str, Any]:
            f = manifest.files[index]
            key = object_key(aid, index)
            async with sem:
                info = await asyncio.to_thread(self.blobs.head, key)
                if info is None:
                    raise FailedPrecondition(f"ciphertext of {f.path} is missing from the blob store")
                raw = await asyncio.to_thread(self.blobs.read_range, key, 0, chunked.HEADER_SIZE)
            try:
                header = chunked.FileHeader.decode(raw)
            except CustosError as exc:
                raise IntegrityError(f"ciphertext of {f.path}: {exc}") from None
            if header.plaintext_len != f.size or header.ciphertext_size != info.size:
                raise IntegrityError(f"ciphertext of {f.path} does not match the manifest "
                                     f"(size {info.size}, header says {header.plaintext_len} bytes)")
            return {"key": key, "path": f.path, "plaintext_size": f.size, "size": info.size}

        objects = list(await asyncio.gather(*[check(i) for i in range(len(manifest.files))]))
        storage = {"blob_store": self.blob_url, "objects": objects, "wrapped_key": up["wrapped_key"]}
        copy = new_copy(aid, up["model"], "object-store", f"{self.blob_url}/{OBJECT_PREFIX}{aid}/",
                        "object-store", "ciphertext", authorized=True,
                        evidence=f"{len(objects)} objects verified by size and header")

        async def plan() -> tuple[Plan, tuple[ArtifactRecord, bool]]:
            extra = Txn(checks={f"uploads/{aid}": pending.mod_revision}, deletes=[f"uploads/{aid}"])
            return await self.registry.artifact_plan(
                caller, model=up["model"], manifest_bytes=manifest_bytes,
                parents=[(p, r) for p, r in up["parents"]], copies=[copy], storage=storage, extra=extra)

        return await self.registry.audit.mutate(caller, "RegisterStoredArtifact", f"artifact/{aid}", plan)

    async def unwrap(self, caller: Caller, *, artifact: str,
                     purpose: str) -> tuple[ArtifactRecord, bytearray, GrantUse | None]:
        """The data key of a stored artifact, for a pull or a run, and the access grant that
        allowed it. Audited, success or not.

        Raises NotFound, FailedPrecondition (not stored, model not active, key
        suspended), HostNotEnrolled, LeaseNotLive, NoGrant, ReleaseRaced, NotFound subclass
        KeyDestroyed, IntegrityError.
        """
        # Only an enrolled host with a live custody lease gets keys; checked before
        # anything about the artifact is looked up.
        host = await self._checked(caller, "UnwrapDataKey", f"artifact/{artifact[:64]}",
                                   self._host_basis(caller))
        halted = self.halted_hint(artifact)
        if halted is not None:
            # Known halted here (its order went down this replica's streams): refused at once,
            # without a Store read queued behind the halt's own writes. Only ever a refusal: a
            # release is checked against the Store whatever this says.
            aid, exc = halted
            self.registry.audit.record_soon(caller, "UnwrapDataKey", f"artifact/{aid}",
                                            f"error: {type(exc).__name__}: {exc}")
            raise exc
        rec = await self.registry.get_artifact(artifact)
        self._models_of[artifact] = (rec.id, rec.model)  # an artifact's model never changes
        obj = f"artifact/{rec.id}"
        if rec.storage is None:
            raise FailedPrecondition(f"artifact {rec.id[:12]} has no stored ciphertext (push it first)")
        basis = host | await self._checked(caller, "UnwrapDataKey", obj,
                                           self._model_basis(rec.model, rec, caller))
        note = (purpose or "pull")[:64]
        key = await self._hand_out(caller, "UnwrapDataKey", obj, rec.model, rec.storage["wrapped_key"],
                                   rec.id, note, basis, rec)
        return rec, key, basis.grant
