"""Key brokering for encrypted push and pull (promises 1 and 3).

The control plane hands a client the plaintext data key of one artifact, wrapped
by the model's Transit key that never leaves Vault, and records every handout in
the audit log. It never sees a weight: it checks ciphertext objects only by size
and header. Keys are unwrapped only while the model is active; a halted model's
unwraps are refused here and, once its Transit key is suspended, by Vault too.

Store keys: ``uploads/{artifact}`` — a push in progress: model, parents,
manifest and the wrapped data key, so an interrupted push resumes with the same
key. It is deleted in the same transaction that registers the artifact as stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from custos.blobs.base import BlobStore
from custos.blobs.url import OBJECT_PREFIX, object_key
from custos.controlplane.audit import Caller, Plan
from custos.controlplane.keys.base import KeyProvider, zeroize
from custos.controlplane.registry import ArtifactRecord, Registry, new_copy
from custos.controlplane.store.base import Txn
from custos.core import chunked
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.manifest import decode_manifest
from custos.errors import Conflict, CustosError, FailedPrecondition, IntegrityError, NotFound


class ModelNotActive(FailedPrecondition):
    """The model is halted or destroyed: no data key is handed out."""


class KeyBroker:
    def __init__(self, registry: Registry, keys: KeyProvider, blobs: BlobStore, blob_url: str,
                 custody: Any = None) -> None:
        self.custody = custody
        self.registry = registry
        self.keys = keys
        self.blobs = blobs
        self.blob_url = blob_url

    async def _active_model(self, caller: Caller, name: str, action: str, obj: str) -> dict[str, Any]:
        model = await self.registry.get_model(name)
        if model["state"] != "active":
            exc = ModelNotActive(f"model {name!r} is {model['state']}: data keys are refused")
            await self.registry.audit.record(caller, action, obj, f"error: ModelNotActive: {exc}")
            raise exc
        return model

    async def create_data_key(
        self, caller: Caller, *, model: str, manifest_bytes: bytes, parents: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """Start or resume a push. Returns {artifact_id, data_key (bytearray) or None,
        resumed, already_stored}. Raises like register_artifact, and ModelNotActive."""
        _, aid, _ = await self.registry.check_artifact_request(model, manifest_bytes, parents)
        obj = f"artifact/{aid}"
        await self._active_model(caller, model, "CreateDataKey", obj)
        existing = await self.registry.store.get(f"artifacts/{aid}")
        if existing is not None and decode_canonical(existing.value).get("storage"):
            return {"artifact_id": aid, "data_key": None, "resumed": False, "already_stored": True}
        pending = await self.registry.store.get(f"uploads/{aid}")
        if pending is not None:
            rec = decode_canonical(pending.value)
            if rec["model"] != model:
                raise Conflict(f"a push of {aid[:12]} for model {rec['model']!r} is in progress")
            key = await self._unwrap(caller, "CreateDataKey", obj, model, rec["wrapped_key"], aid, "resumed")
            return {"artifact_id": aid, "data_key": key, "resumed": True, "already_stored": False}

        await asyncio.to_thread(self.keys.ensure_key, model)
        dk = await asyncio.to_thread(self.keys.generate_data_key, model, aid.encode())

        async def plan() -> tuple[Plan, None]:
            if await self.registry.store.get(f"uploads/{aid}") is not None:
                raise Conflict(f"a push of {aid[:12]} started concurrently; run the push again")
            record = {
                "at_ns": time.time_ns(), "by": caller.principal, "manifest": manifest_bytes.decode(),
                "model": model, "parents": sorted([list(p) for p in parents]),
                "wrapped_key": dk.wrapped,
            }
            return Plan(Txn(checks={f"uploads/{aid}": 0},
                            puts={f"uploads/{aid}": encode_canonical(record)})), None

        try:
            await self.registry.audit.mutate(caller, "CreateDataKey", obj, plan)
        except BaseException:
            dk.zeroize()
            raise
        return {"artifact_id": aid, "data_key": dk.plaintext, "resumed": False, "already_stored": False}

    async def _unwrap(self, caller: Caller, action: str, obj: str, model: str, wrapped: str,
                      aid: str, note: str) -> bytearray:
        try:
            key = await asyncio.to_thread(self.keys.unwrap, model, wrapped, aid.encode())
        except CustosError as exc:
            await self.registry.audit.record(caller, action, obj, f"error: {type(exc).__name__}: {exc}")
            raise
        try:
            # Fail closed: no key leaves without its audit event.
            await self.registry.audit.record(caller, action, obj, f"ok: {note}")
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

    async def unwrap(self, caller: Caller, *, artifact: str, purpose: str) -> tuple[ArtifactRecord, bytearray]:
        """The data key of a stored artifact, for a pull or a run. Audited, success or not.

        Raises NotFound, FailedPrecondition (not stored, model not active, key
        suspended), NotFound subclass KeyDestroyed, IntegrityError.
        """
        if caller.role == "agent" and self.custody is not None:
            # Only an enrolled host with a live custody lease gets keys.
            try:
                await self.custody.check_agent(caller, need_lease=True)
            except CustosError as exc:
                await self.registry.audit.record(caller, "UnwrapDataKey", f"artifact/{artifact[:64]}",
                                                 f"error: {type(exc).__name__}: {exc}")
                raise
        rec = await self.registry.get_artifact(artifact)
        obj = f"artifact/{rec.id}"
        if rec.storage is None:
            raise FailedPrecondition(f"artifact {rec.id[:12]} has no stored ciphertext (push it first)")
        await self._active_model(caller, rec.model, "UnwrapDataKey", obj)
        note = (purpose or "pull")[:64]
        key = await self._unwrap(caller, "UnwrapDataKey", obj, rec.model, rec.storage["wrapped_key"],
                                 rec.id, note)
        return rec, key
