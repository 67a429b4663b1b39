"""The registry: models, artifacts, derivations, lineage and copies on the Store.

Every write goes through ``AuditLog.mutate`` (one transaction with its audit
event). Records are canonical JSON values under these keys:

    models/{name}                          model record
    artifacts/{id}                         artifact record (with its canonical manifest)
    model-artifacts/{model}/{id}           index
    lineage/parents/{child}/{parent}       derivation edge, by child
    lineage/children/{parent}/{child}      the same edge, by parent
    copies/{artifact}/{copy-id}            a known copy
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from custos.controlplane.audit import AuditLog, Caller, Plan
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.lineage import Relation, check_new_edges, check_parents
from custos.core.manifest import Manifest, decode_manifest, is_artifact_id
from custos.errors import Conflict, InvalidInput, NotFound

COVERED_FLOPS = 1e26
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MODEL_STATES = ("active", "halted", "destroyed")
LOCATION_KINDS = ("object-store", "host-path", "process")
COPY_FORMS = ("ciphertext", "plaintext", "loaded")


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise InvalidInput(
            f"bad model name {name!r}: want 1-63 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return name


def is_covered(training_flops: float, benchmark_equivalence: str) -> bool:
    return training_flops > COVERED_FLOPS or bool(benchmark_equivalence.strip())


def _text(value: str, what: str, max_len: int = 512, required: bool = True) -> str:
    value = (value or "").strip()
    if required and not value:
        raise InvalidInput(f"{what} is required")
    if len(value) > max_len or any(ord(c) < 0x20 for c in value):
        raise InvalidInput(f"bad {what}: at most {max_len} printable characters")
    return value


@dataclass(frozen=True)
class ArtifactRecord:
    id: str
    model: str
    manifest: Manifest
    manifest_bytes: bytes
    created_at_ns: int
    created_by: str
    parents: dict[str, str]  # parent id -> relation
    storage: dict[str, Any] | None = None  # {"wrapped_key", "objects", "blob_store"} once stored

    @property
    def stored(self) -> bool:
        return self.storage is not None


class Registry:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    # -- models --------------------------------------------------------------

    async def register_model(
        self,
        caller: Caller,
        *,
        name: str,
        owner: str,
        training_flops: float,
        benchmark_equivalence: str = "",
        exemption: dict[str, str] | None = None,
        drill: bool = False,
    ) -> dict[str, Any]:
        """Register a model. Raises InvalidInput, Conflict (name taken)."""
        obj = f"model/{name}"

        async def plan() -> tuple[Plan, dict[str, Any]]:
            validate_model_name(name)
            own = _text(owner or caller.principal, "owner")
            if not isinstance(training_flops, int | float) or not math.isfinite(training_flops) \
                    or training_flops < 0:
                raise InvalidInput("training FLOP must be a finite number >= 0")
            basis = _text(benchmark_equivalence, "benchmark-equivalence basis", 2000, False)
            ex = None
            if exemption and any(exemption.values()):
                ex = {
                    "basis": _text(exemption.get("basis", ""), "exemption basis", 2000),
                    "certifier": _text(exemption.get("certifier", ""), "exemption certifier"),
                    "date": _date(exemption.get("date", "")),
                }
            key = f"models/{name}"
            if await self.store.get(key) is not None:
                raise Conflict(f"model {name!r} already exists")
            record = {
                "benchmark_equivalence": basis,
                "covered": is_covered(float(training_flops), basis),
                "created_at_ns": time.time_ns(),
                "created_by": caller.principal,
                "drill": bool(drill),
                "exemption": ex,
                "name": name,
                "owner": own,
                "state": "active",
                # FLOP as a decimal string: canonical JSON has no floats.
                "training_flops": repr(float(training_flops)),
                "transit_key": f"custos-{name}",
            }
            return Plan(Txn(checks={key: 0}, puts={key: encode_canonical(record)})), record

        return await self.audit.mutate(caller, "RegisterModel", obj, plan)

    async def set_custody_policy(self, caller: Caller, *, name: str, hosts: list[str],
                                 paths: list[str]) -> dict[str, Any]:
        """Where copies of the model may live (fnmatch patterns). Raises InvalidInput, NotFound."""
        async def plan() -> tuple[Plan, dict[str, Any]]:
            validate_model_name(name)
            entry = await self.store.get(f"models/{name}")
            if entry is None:
                raise NotFound(f"model {name!r} not found")
            for pat in [*hosts, *paths]:
                _text(pat, "custody pattern", 512)
            if len(hosts) > 100 or len(paths) > 100:
                raise InvalidInput("at most 100 host and 100 path patterns")
            record = dict(decode_canonical(entry.value))
            record["custody_hosts"] = sorted(set(hosts))
            record["custody_paths"] = sorted(set(paths))
            txn = Txn(checks={f"models/{name}": entry.mod_revision},
                      # meta/artifacts moves whenever what inventories are judged against changes.
                      puts={f"models/{name}": encode_canonical(record), "meta/artifacts": b"{}"})
            return Plan(txn), record

        return await self.audit.mutate(caller, "SetCustodyPolicy", f"model/{name}", plan)

    async def get_model(self, name: str) -> dict[str, Any]:
        validate_model_name(name)
        entry = await self.store.get(f"models/{name}")
        if entry is None:
            raise NotFound(f"model {name!r} not found")
        return dict(decode_canonical(entry.value))

    async def list_models(self) -> list[dict[str, Any]]:
        return [dict(decode_canonical(e.value)) for e in await self.store.range("models/")]

    async def model_artifact_ids(self, name: str) -> list[str]:
        prefix = f"model-artifacts/{name}/"
        return [e.key[len(prefix):] for e in await self.store.range(prefix)]

    # -- artifacts -----------------------------------------------------------

    async def register_artifact(
        self,
        caller: Caller,
        *,
        model: str,
        manifest_bytes: bytes,
        parents: list[tuple[str, str]],
        source_host: str = "",
        source_path: str = "",
    ) -> tuple[ArtifactRecord, bool]:
        """Register an artifact from canonical manifest bytes; idempotent.

        Returns (record, created). Re-registering the same manifest for the same
        model records any new parents and returns created=False. Raises
        InvalidInput (bad manifest, unknown parent, bad relation), NotFound
        (model), Conflict (manifest registered to another model, cycle).
        """
        manifest = decode_manifest(manifest_bytes)  # validates every path
        aid = manifest.artifact_id

        async def plan() -> tuple[Plan, tuple[ArtifactRecord, bool]]:
            copies = []
            if source_path:
                host = _text(source_host or caller.host, "source host", 255)
                path = _text(source_path, "source path", 4096)
                copies.append(new_copy(aid, model, "host-path", f"{host}:{path}", host, "plaintext",
                                       authorized=True,
                                       evidence=f"registered from {path} by {caller.principal}"))
            return await self.artifact_plan(caller, model=model, manifest_bytes=manifest_bytes,
                                            parents=parents, copies=copies)

        return await self.audit.mutate(caller, "RegisterArtifact", f"artifact/{aid}", plan)

    async def check_artifact_request(
        self, model: str, manifest_bytes: bytes, parents: list[tuple[str, str]]
    ) -> tuple[Manifest, str, dict[str, str]]:
        """Validate a registration without writing: (manifest, id, parent -> relation).

        Raises InvalidInput, NotFound, Conflict like register_artifact.
        """
        manifest = decode_manifest(manifest_bytes)
        aid = manifest.artifact_id
        await self.get_model(model)
        rels: dict[str, str] = {}
        for pid, rel in parents:
            if not is_artifact_id(pid):
                raise InvalidInput(f"bad parent id {pid!r}: want 64 lowercase hex digits")
            relation = Relation.parse(rel).value
            if pid in rels and rels[pid] != relation:
                raise InvalidInput(f"parent {pid[:12]} given twice with different relations")
            rels[pid] = relation
        check_parents({p: Relation(r) for p, r in rels.items()})
        for pid in rels:
            if await self.store.get(f"artifacts/{pid}") is None:
                raise InvalidInput(f"unknown parent artifact {pid[:12]}")
        existing = await self.store.get(f"artifacts/{aid}")
        if existing is not None:
            rec = decode_canonical(existing.value)
            if rec["model"] != model:
                raise Conflict(f"artifact {aid[:12]} is already registered to model {rec['model']!r}")
        return manifest, aid, rels

    async def artifact_plan(
        self,
        caller: Caller,
        *,
        model: str,
        manifest_bytes: bytes,
        parents: list[tuple[str, str]],
        copies: list[dict[str, Any]],
        storage: dict[str, Any] | None = None,
        extra: Txn | None = None,
    ) -> tuple[Plan, tuple[ArtifactRecord, bool]]:
        """The writes that register (or update) an artifact, for use inside a mutation.

        ``storage`` marks the artifact as stored: {"wrapped_key", "objects", "blob_store"}.
        ``extra`` adds writes of the caller's (e.g. deleting the pending upload).
        """
        _, aid, rels = await self.check_artifact_request(model, manifest_bytes, parents)
        txn = extra or Txn()
        now = time.time_ns()
        existing = await self.store.get(f"artifacts/{aid}")
        created = existing is None
        old: dict[str, Any] = dict(decode_canonical(existing.value)) if existing else {}
        old_parents: dict[str, str] = dict(old.get("parents", {}))
        new_parents = {p: r for p, r in rels.items() if p not in old_parents}
        for p, r in rels.items():
            if p in old_parents and old_parents[p] != r:
                raise Conflict(f"derivation {p[:12]} -> {aid[:12]} already recorded as {old_parents[p]}")
        if new_parents:
            check_new_edges(aid, new_parents, await self.descendants([aid]))
        record = {
            "created_at_ns": old.get("created_at_ns", now),
            "created_by": old.get("created_by", caller.principal),
            "id": aid,
            "manifest": manifest_bytes.decode(),
            "model": model,
            "parents": dict(sorted({**old_parents, **new_parents}.items())),
            "storage": old.get("storage"),
        }
        if storage is not None and record["storage"] is None:
            record["storage"] = storage
        changed = created or bool(new_parents) or record["storage"] != old.get("storage")
        if changed:
            txn.puts[f"artifacts/{aid}"] = encode_canonical(record)
            txn.checks[f"artifacts/{aid}"] = existing.mod_revision if existing else 0
        if created:
            txn.puts[f"model-artifacts/{model}/{aid}"] = b"{}"
            txn.puts["meta/artifacts"] = b"{}"  # moves on every new artifact: caches key on it
        for p, r in new_parents.items():
            edge = encode_canonical({"at_ns": now, "by": caller.principal, "relation": r})
            txn.puts[f"lineage/parents/{aid}/{p}"] = edge
            txn.puts[f"lineage/children/{p}/{aid}"] = edge
        for copy in copies:
            key = f"copies/{aid}/{copy['id']}"
            if await self.store.get(key) is None:
                txn.puts[key] = encode_canonical(copy)
        result = "ok" if created else ("updated" if txn.puts or txn.deletes else "already-exists")
        return Plan(txn, result), (self._decode_artifact(encode_canonical(record)), created)

    async def record_copy(self, caller: Caller, *, artifact: str, host: str, path: str, form: str,
                          kind: str = "host-path", evidence: str = "") -> dict[str, Any]:
        """Record (or refresh) a copy of an artifact. Raises InvalidInput, NotFound."""
        async def plan() -> tuple[Plan, dict[str, Any]]:
            rec = await self.get_artifact(artifact)
            h = _text(host or caller.host, "host", 255)
            p = _text(path, "path", 4096)
            copy = new_copy(rec.id, rec.model, kind, f"{h}:{p}", h, form, authorized=True,
                            evidence=evidence or f"recorded by {caller.principal}")
            key = f"copies/{rec.id}/{copy['id']}"
            old = await self.store.get(key)
            if old is not None:
                prev = decode_canonical(old.value)
                copy["first_seen_ns"] = prev["first_seen_ns"]
                copy["authorized"] = prev["authorized"]
            return Plan(Txn(puts={key: encode_canonical(copy)})), copy

        return await self.audit.mutate(caller, "RecordCopy", f"artifact/{artifact[:64]}", plan)

    def _decode_artifact(self, value: bytes) -> ArtifactRecord:
        rec = decode_canonical(value)
        mbytes = rec["manifest"].encode()
        return ArtifactRecord(
            id=rec["id"],
            model=rec["model"],
            manifest=decode_manifest(mbytes),
            manifest_bytes=mbytes,
            created_at_ns=int(rec["created_at_ns"]),
            created_by=rec["created_by"],
            parents=dict(rec["parents"]),
            storage=rec.get("storage"),
        )

    async def resolve_artifact_id(self, ref: str) -> str:
        """Full id from an id or a unique prefix of at least 8 hex digits.

        Raises InvalidInput, NotFound.
        """
        entry = await self.store.find_by_id("artifact", "artifacts/", ref, min_hex=8)
        return entry.key[len("artifacts/"):]

    async def get_artifact(self, ref: str) -> ArtifactRecord:
        aid = await self.resolve_artifact_id(ref)
        entry = await self.store.get(f"artifacts/{aid}")
        if entry is None:
            raise NotFound(f"artifact {aid[:12]} not found")
        return self._decode_artifact(entry.value)

    async def list_artifacts(self, model: str) -> list[ArtifactRecord]:
        await self.get_model(model)
        return [await self.get_artifact(a) for a in await self.model_artifact_ids(model)]

    # -- lineage -------------------------------------------------------------

    async def record_derivation(self, caller: Caller, *, child: str, parent: str,
                                relation: str) -> None:
        """Record parent -> child between registered artifacts.

        Raises InvalidInput, NotFound, Conflict (cycle, or a different relation exists).
        """
        obj = f"derivation/{parent[:64]}->{child[:64]}"

        async def plan() -> tuple[Plan, None]:
            rel = Relation.parse(relation).value
            c = await self.get_artifact(child)
            p = await self.get_artifact(parent)
            if p.id in c.parents:
                if c.parents[p.id] == rel:
                    return Plan(Txn(), "already-exists"), None
                raise Conflict(f"derivation already recorded as {c.parents[p.id]}")
            check_new_edges(c.id, [p.id], await self.descendants([c.id]))
            now = time.time_ns()
            edge = encode_canonical({"at_ns": now, "by": caller.principal, "relation": rel})
            rec = decode_canonical((await self.store.get(f"artifacts/{c.id}")).value)  # type: ignore[union-attr]
            rec["parents"] = dict(sorted({**rec["parents"], p.id: rel}.items()))
            txn = Txn(puts={
                f"artifacts/{c.id}": encode_canonical(rec),
                f"lineage/parents/{c.id}/{p.id}": edge,
                f"lineage/children/{p.id}/{c.id}": edge,
            })
            return Plan(txn), None

        await self.audit.mutate(caller, "RecordDerivation", obj, plan)

    async def _edges(self, node: str, direction: str) -> list[tuple[str, str]]:
        prefix = f"lineage/{direction}/{node}/"
        return [(decode_canonical(e.value)["relation"], e.key[len(prefix):])
                for e in await self.store.range(prefix)]

    async def _closure(self, start: list[str], direction: str) -> tuple[list[str], list[tuple[str, str, str]]]:
        """(nodes reached, edges parent->child with relation), breadth first."""
        seen: set[str] = set()
        order: list[str] = []
        edges: list[tuple[str, str, str]] = []
        frontier = list(start)
        while frontier:
            nxt: list[str] = []
            for node in frontier:
                for rel, other in await self._edges(node, direction):
                    if direction == "children":
                        edges.append((node, other, rel))
                    else:
                        edges.append((other, node, rel))
                    if other not in seen:
                        seen.add(other)
                        order.append(other)
                        nxt.append(other)
            frontier = nxt
        return order, edges

    async def descendants(self, start: list[str]) -> list[str]:
        return (await self._closure(start, "children"))[0]

    async def ancestors(self, start: list[str]) -> list[str]:
        return (await self._closure(start, "parents"))[0]

    async def lineage(self, *, model: str | None, artifact: str | None,
                      ancestors: bool, descendants: bool) -> dict[str, Any]:
        """Nodes, edges and models reachable from a model's artifacts or one artifact."""
        if model:
            await self.get_model(model)
            subjects = await self.model_artifact_ids(model)
        elif artifact:
            subjects = [await self.resolve_artifact_id(artifact)]
        else:
            raise InvalidInput("lineage needs a model or an artifact")
        nodes = list(subjects)
        edges: list[tuple[str, str, str]] = []
        if ancestors:
            n, e = await self._closure(subjects, "parents")
            nodes += n
            edges += e
        if descendants:
            n, e = await self._closure(subjects, "children")
            nodes += n
            edges += e
        unique = list(dict.fromkeys(nodes))
        models = {}
        for aid in unique:
            models[aid] = (await self.get_artifact(aid)).model
        return {
            "subjects": subjects,
            "nodes": [{"artifact_id": a, "model": models[a], "subject": a in subjects} for a in unique],
            "edges": [{"parent": p, "child": c, "relation": r}
                      for p, c, r in dict.fromkeys(edges)],
            "models": list(dict.fromkeys([*([model] if model else []), *models.values()])),
        }

    async def derivative_scope(self, model: str) -> tuple[list[str], list[str]]:
        """(models, artifact ids): the model's artifacts and everything derived from them."""
        await self.get_model(model)
        own = await self.model_artifact_ids(model)
        desc = await self.descendants(own)
        artifacts = list(dict.fromkeys(own + desc))
        models = [model]
        for aid in desc:
            m = (await self.get_artifact(aid)).model
            if m not in models:
                models.append(m)
        return models, artifacts

    # -- copies --------------------------------------------------------------

    async def list_copies(self, model: str, *, include_derivatives: bool = True
                          ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        if include_derivatives:
            models, artifacts = await self.derivative_scope(model)
        else:
            await self.get_model(model)
            models, artifacts = [model], await self.model_artifact_ids(model)
        copies = []
        for aid in artifacts:
            copies += [dict(decode_canonical(e.value)) for e in await self.store.range(f"copies/{aid}/")]
        return models, artifacts, copies


def copy_id(artifact_id: str, kind: str, location: str, form: str) -> str:
    """A copy's deterministic id: the same artifact, place and form is the same copy."""
    return hashlib.sha256(f"{artifact_id}\x00{kind}\x00{location}\x00{form}".encode()).hexdigest()[:24]


def new_copy(artifact_id: str, model: str, kind: str, location: str, host: str, form: str, *,
             authorized: bool, evidence: str = "", state: str = "present") -> dict[str, Any]:
    if kind not in LOCATION_KINDS or form not in COPY_FORMS:
        raise InvalidInput(f"bad copy kind/form {kind}/{form}")
    now = time.time_ns()
    cid = copy_id(artifact_id, kind, location, form)
    return {
        "artifact_id": artifact_id,
        "authorized": authorized,
        "evidence": evidence,
        "first_seen_ns": now,
        "form": form,
        "host": host,
        "id": cid,
        "last_seen_ns": now,
        "location": location,
        "location_kind": kind,
        "model": model,
        "state": state,
    }


def _date(value: str) -> str:
    try:
        return dt.date.fromisoformat((value or "").strip()).isoformat()
    except ValueError:
        raise InvalidInput(f"bad exemption date {value!r}: want YYYY-MM-DD") from None
