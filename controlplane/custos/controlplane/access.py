"""Access grants: the two-person rule, enforced where data keys are released (docs/access.md).

Store keys:

    access/policies/{model}           a model's AccessPolicy (absent: the default for its covered status)
    access/approvers/{name}           an Approver: principals and keys (admin-managed)
    access/requests/{id}              a request and, once approved, the grant: body, approvals, state
    access/grantee/{p:P|h:H}/{id}     index: the grants a principal or a host may use

A release of a data key (custos.controlplane.keys.broker) asks ``release_basis`` for
the grant that covers its caller and artifact and conditions its commit on that grant
record, the model's policy record and the model record (whose ``access_epoch`` a halt
or destroy moves at quorum, revoking every grant in scope in the order's own
transaction): a revocation, an extension or a halt that commits first fails the
release. Expiry is exact: the release checks ``not_after`` at its commit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from custos.controlplane.audit import SYSTEM, Caller, Plan
from custos.controlplane.registry import ArtifactRecord, Registry
from custos.controlplane.store.base import Entry, Txn
from custos.core.access import (
    APPROVAL_NAMESPACE,
    BREAK_GLASS_MAX,
    DEFAULT_PENDING,
    AccessError,
    AccessPolicy,
    AccessRequest,
    Approval,
    Approver,
    Grantee,
    check_approver_set,
    check_reason,
    count_approvals,
    default_policy,
    judge_approval,
)
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.names import MODEL_NAME
from custos.core.signers import Signature
from custos.errors import Conflict, FailedPrecondition, InvalidInput, NotFound, Unauthorized

POLICIES = "access/policies/"
APPROVERS = "access/approvers/"
REQUESTS = "access/requests/"
GRANTEES = "access/grantee/"
NS = 1_000_000_000


_WHY = {"void": " (a model it reaches was halted since it was made; ask again)"}


class NoGrant(Unauthorized):
    """No active access grant covers this caller and artifact: the data key is refused."""


OutboxPuts = Callable[..., dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class GrantUse:
    """The grant a release used: what the caller is told (the agent stops a workload at ``not_after_ns``)."""

    id: str
    not_after_ns: int
    on_expiry: str
    key: str  # access/requests/{id}
    revision: int


def model_epoch(model_record: Mapping[str, Any]) -> int:
    return int(model_record.get("access_epoch", 0))


def _halted_since(recorded: Mapping[str, int], epochs: Mapping[str, int] | None) -> bool:
    return epochs is not None and any(epochs.get(m, 0) != e for m, e in recorded.items())


def effective_state(rec: Mapping[str, Any], now_ns: int, epochs: Mapping[str, int] | None = None) -> str:
    """A record's state now: ``pending`` and ``active`` lapse by time; given the models' current
    ``epochs``, a pending request whose models were halted since is ``void``, an active grant ``revoked``."""
    state = rec["state"]
    if state == "pending":
        if now_ns >= rec["expires_ns"]:
            return "expired"
        if _halted_since(rec.get("request_epochs", {}), epochs):
            return "void"
    if state == "active":
        if _halted_since(rec["epochs"], epochs):
            return "revoked"
        if now_ns >= rec["not_after_ns"]:
            return "expired"
    return str(state)


class AccessService:
    def __init__(self, registry: Registry, *, outbox: OutboxPuts | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.registry = registry
        self.store = registry.store
        self.audit = registry.audit
        self.outbox = outbox
        self.clock = clock

    def _notify(self, kind: str, payload: Mapping[str, Any], severity: str = "medium") -> dict[str, bytes]:
        return self.outbox(kind, payload, severity=severity) if self.outbox is not None else {}

    # -- policies ------------------------------------------------------------------

    async def _model(self, name: str) -> tuple[Entry, dict[str, Any]]:
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise InvalidInput(f"bad model name {str(name)[:64]!r}")
        entry = await self.store.get(f"models/{name}")
        if entry is None:
            raise NotFound(f"model {name!r} not found")
        return entry, dict(decode_canonical(entry.value))

    async def policy(self, model: str) -> tuple[AccessPolicy, Entry | None, bool]:
        """(policy, its record or None for the default, covered)."""
        _, m = await self._model(model)
        entry = await self.store.get(f"{POLICIES}{model}")
        if entry is None:
            return default_policy(covered=bool(m["covered"])), None, bool(m["covered"])
        return AccessPolicy.from_json(decode_canonical(entry.value)["policy"]), entry, bool(m["covered"])

    async def set_policy(self, caller: Caller, model: str, policy: AccessPolicy) -> AccessPolicy:
        """Raises AccessError (a covered model with zero approvals), NotFound."""

        async def plan() -> tuple[Plan, AccessPolicy]:
            _, entry, covered = await self.policy(model)
            policy.check_for(covered=covered)
            rec = {"policy": policy.to_json(), "set_at_ns": self.clock(), "set_by": caller.principal}
            key = f"{POLICIES}{model}"
            return Plan(Txn(checks={key: entry.mod_revision if entry else 0}, puts={key: encode_canonical(rec)}),
                        "ok: " + ", ".join(f"{k}={v}" for k, v in sorted(policy.to_json().items()))), policy

        return await self.audit.mutate(caller, "SetAccessPolicy", f"model/{model[:64]}", plan)

    # -- approvers -----------------------------------------------------------------

    async def approvers(self) -> list[Approver]:
        return [Approver.from_json(decode_canonical(e.value)) for e in await self.store.range(APPROVERS)]

    async def add_approver(self, caller: Caller, approver: Approver, *, replace: bool = False) -> Approver:
        """Register (or with ``replace``, change) an approver. Raises AccessError (a key or
        identity already another approver's), Conflict (exists)."""
        key = f"{APPROVERS}{approver.name}"

        async def plan() -> tuple[Plan, Approver]:
            entries = {e.key: e for e in await self.store.range(APPROVERS)}
            if key in entries and not replace:
                raise Conflict(f"approver {approver.name} exists (use --replace to change it)")
            others = [Approver.from_json(decode_canonical(e.value)) for k, e in entries.items() if k != key]
            check_approver_set([*others, approver])
            rec = {**approver.to_json(), "added_at_ns": self.clock(), "added_by": caller.principal}
            checks = {k: e.mod_revision for k, e in entries.items()}  # the set as checked
            checks.setdefault(key, 0)
            return Plan(Txn(checks=checks, puts={key: encode_canonical(rec)}),
                        f"ok: principals {', '.join(approver.principals)}; keys "
                        + ", ".join(k.key_id[:16] for k in approver.keys)), approver

        return await self.audit.mutate(caller, "AddApprover", f"approver/{approver.name}", plan)

    async def ensure_approver(self, approver: Approver) -> None:
        """Dev mode: register ``approver`` unless one of that name exists."""
        if await self.store.get(f"{APPROVERS}{approver.name}") is None:
            try:
                await self.add_approver(SYSTEM, approver)
            except Conflict:
                pass

    # -- requests ------------------------------------------------------------------

    async def _resolve(self, model: str, artifact: str, policy: AccessPolicy) -> tuple[list[str], list[str]]:
        """(artifacts, models) a request on ``model`` (or one ``artifact``) reaches: the stored
        artifacts of the model and, if the policy extends to them, of its derivatives."""
        reach = await self.registry.model_artifact_ids(model)
        if policy.derivatives:
            reach = list(dict.fromkeys([*reach, *await self.registry.descendants(reach)]))
        records: list[ArtifactRecord] = [await self.registry.get_artifact(a) for a in reach]
        if artifact:
            aid = await self.registry.resolve_artifact_id(artifact)
            records = [r for r in records if r.id == aid]
            if not records:
                raise FailedPrecondition(
                    f"artifact {aid[:12]} is not {model}'s" + (" or a derivative's" if policy.derivatives else "")
                    + ": ask for access to its own model")
        stored = [r for r in records if r.stored]
        if not stored:
            raise FailedPrecondition(f"model {model} has no stored artifact to grant access to")
        return sorted(r.id for r in stored), sorted({r.model for r in stored})

    async def lineage_policy(self, model: str, artifacts: Sequence[str],
                             model_record: Mapping[str, Any] | None = None) -> tuple[AccessPolicy, dict[str, int]]:
        """The policy ``artifacts`` of ``model`` are under: the strictest of the policies of their
        models and of every model they derive from (``strictest``, ``model``'s first), and the
        revisions of those policy records (0: absent, the model's default). Reads only.
        Raises NotFound (a model of the lineage is gone), AccessError."""
        models = [model, *[m for m in await self.lineage_models(artifacts) if m != model]]
        keys = [f"{POLICIES}{m}" for m in models]
        found = await self.store.get_many(keys)
        records = {model: model_record} if model_record is not None else {}
        missing = [f"models/{m}" for m in models if f"{POLICIES}{m}" not in found and m not in records]
        for k, e in (await self.store.get_many(missing)).items():
            records[k[len("models/"):]] = decode_canonical(e.value)
        policies = []
        for m, k in zip(models, keys, strict=True):
            if k in found:
                policies.append(AccessPolicy.from_json(decode_canonical(found[k].value)["policy"]))
            elif m in records:
                policies.append(default_policy(covered=bool(records[m]["covered"])))
            else:
                raise NotFound(f"model {m!r} not found")
        return strictest(policies), {k: found[k].mod_revision if k in found else 0 for k in keys}

    async def _check_active_models(self, models: Sequence[str]) -> dict[str, tuple[int, int]]:
        """model -> (record revision, access epoch). Raises FailedPrecondition for a model not active."""
        out = {}
        for m in models:
            entry, rec = await self._model(m)
            if rec["state"] != "active":
                raise FailedPrecondition(f"model {m!r} is {rec['state']}: no access is granted to it")
            out[m] = (entry.mod_revision, model_epoch(rec))
        return out

    async def request(self, caller: Caller, *, model: str, artifact: str = "", principal: str = "",
                      hosts: Sequence[str] = (), duration_s: int, reason: str,
                      pending_s: int = DEFAULT_PENDING, extends: str = "") -> dict[str, Any]:
        """Record a request; returns its record. An extension (``extends``) repeats its grant's
        scope. Raises AccessError, NotFound, FailedPrecondition."""
        obj = f"model/{str(model)[:64]}"

        async def plan() -> tuple[Plan, dict[str, Any]]:
            nonlocal model
            grantee_hosts, grantee_principal, art = tuple(hosts), principal, artifact
            if extends:
                parent = await self._record(extends)
                body = AccessRequest.decode(parent["body"].encode())
                if effective_state(parent, self.clock()) != "active":
                    raise FailedPrecondition(f"grant {parent['id'][:16]} is not active: ask for a new one")
                if caller.role == "agent" and f"h:{caller.principal}" not in body.grantee.keys():
                    raise Unauthorized(f"grant {parent['id'][:16]} is not this host's")
                model, grantee_hosts, grantee_principal = body.model, body.grantee.hosts, body.grantee.principal
                artifacts, models = list(body.artifacts), list(body.models)
            elif caller.role == "agent":
                raise Unauthorized("an agent may only ask to extend a grant its host holds")
            else:
                p, _, _ = await self.policy(model)
                artifacts, models = await self._resolve(model, art, p)
            policy, _ = await self.lineage_policy(model, artifacts)
            if duration_s > policy.max_lifetime_s:
                raise AccessError(f"--for {duration_s}s is longer than the policy allows ({policy.max_lifetime_s}s)")
            at_request = await self._check_active_models(models)
            req = AccessRequest.create(
                model=model, artifacts=artifacts, models=models,
                grantee=Grantee(principal=grantee_principal, hosts=grantee_hosts), duration_s=duration_s,
                reason=check_reason(reason), requester=caller.principal, requester_cert=caller.cert_sha256,
                requested_at=self.clock() // NS, pending_s=pending_s, extends=extends)
            rec = {"approvals": [], "body": req.encode().decode(), "break_glass": False, "counted": [],
                   "created_ns": self.clock(), "epochs": {}, "expires_ns": req.expires_at * NS, "id": req.id,
                   "model": req.model, "not_after_ns": 0, "activated_at_ns": 0, "policy": policy.to_json(),
                   "request_epochs": {m: ep for m, (_, ep) in at_request.items()},
                   "revoked": None, "state": "pending"}
            key = f"{REQUESTS}{req.id}"
            puts = {key: encode_canonical(rec)}
            puts.update(self._notify("access.requested", {"request": view(rec, self.clock())}))
            return Plan(Txn(checks={key: 0}, puts=puts),
                        f"ok: request {req.id[:16]} for {req.grantee.describe()}, {len(req.artifacts)} artifacts, "
                        f"{req.duration_s}s"), rec

        return await self.audit.mutate(caller, "AccessRequest", obj, plan)

    async def _record(self, ref: str) -> dict[str, Any]:
        entry = await self._entry(ref)
        return dict(decode_canonical(entry.value))

    async def _entry(self, ref: str) -> Entry:
        ref = (ref or "").strip().lower()
        if not ref or len(ref) > 64 or not all(c in "0123456789abcdef" for c in ref):
            raise InvalidInput(f"bad request id {ref[:64]!r}: want hex (a prefix of at least 8 digits)")
        if len(ref) == 64:
            entry = await self.store.get(f"{REQUESTS}{ref}")
            if entry is None:
                raise NotFound(f"access request {ref[:16]} not found")
            return entry
        if len(ref) < 8:
            raise InvalidInput("an access request id prefix needs at least 8 hex digits")
        found = await self.store.range(f"{REQUESTS}{ref}", limit=2)
        if not found:
            raise NotFound(f"access request {ref} not found")
        if len(found) > 1:
            raise InvalidInput(f"access request prefix {ref} is ambiguous")
        return found[0]

    async def get(self, ref: str) -> dict[str, Any]:
        rec = await self._record(ref)
        return view(rec, self.clock(), await self._epochs(rec))

    async def _epochs(self, rec: Mapping[str, Any]) -> dict[str, int]:
        """The current access epoch of each model ``rec`` recorded one for (-1: model gone)."""
        names = sorted({*rec["epochs"], *rec.get("request_epochs", {})})
        found = await self.store.get_many([f"models/{m}" for m in names])
        return {m: model_epoch(decode_canonical(found[f"models/{m}"].value)) if f"models/{m}" in found else -1
                for m in names}

    async def list_requests(self, *, states: Sequence[str] = (), model: str = "") -> list[dict[str, Any]]:
        now = self.clock()
        epochs = {m["name"]: model_epoch(m) for m in await self.registry.list_models()}  # once, not per record
        out = []
        for e in await self.store.range(REQUESTS):
            rec = decode_canonical(e.value)
            v = view(rec, now, epochs)
            if (model and model not in v["models"]) or (states and v["state"] not in states):
                continue
            out.append(v)
        return sorted(out, key=lambda v: v["created_ns"])

    async def _current(self, key: str, rid: str, allowed: tuple[str, ...],
                       refusal: str) -> tuple[Entry, dict[str, Any], int, AccessRequest, str]:
        """The request record at ``key`` as it is now (entry, record, now, signed body, state), if its
        effective state is one of ``allowed``. Raises FailedPrecondition saying ``refusal``."""
        entry = await self.store.get(key)
        assert entry is not None
        rec = dict(decode_canonical(entry.value))
        now = self.clock()
        state = effective_state(rec, now, await self._epochs(rec))
        if state not in allowed:
            why = _WHY.get(state, "") if allowed == ("pending",) else ""
            raise FailedPrecondition(f"access request {rid[:16]} is {state}{why}: {refusal}")
        return entry, rec, now, AccessRequest.decode(rec["body"].encode()), state

    async def approve(self, caller: Caller, ref: str, signature: Signature) -> dict[str, Any]:
        """Add ``caller``'s approval; at enough approvals the grant is active (an extension moves its
        grant's ``not_after``). Raises AccessError (the approval does not count, and why),
        FailedPrecondition (not pending, expired, a model halted), NotFound."""
        rid = (await self._entry(ref)).key[len(REQUESTS):]
        key = f"{REQUESTS}{rid}"

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry, rec, now, req, _ = await self._current(key, rid, ("pending",), "nothing to approve")
            policy, policy_revs = await self.lineage_policy(req.model, req.artifacts)
            approvers = await self.approvers()
            approval = Approval(key_id=signature.key_id, sig=signature.sig, principal=caller.principal,
                                role=caller.role, cert_sha256=caller.cert_sha256, at_ns=now)
            name, why = judge_approval(req, approval, approvers, policy)
            if name is None:
                raise AccessError(f"approval refused: {why}")
            approvals = [Approval.from_json(a) for a in rec["approvals"]]
            if name in count_approvals(req, approvals, approvers, policy).counted:
                raise AccessError(f"approval refused: {name} already approved: one person counts once")
            approvals.append(approval)
            count = count_approvals(req, approvals, approvers, policy)
            rec["approvals"] = [a.to_json() for a in approvals]
            rec["counted"] = list(count.counted)
            rec["policy"] = policy.to_json()
            txn = Txn(checks={key: entry.mod_revision, **policy_revs})
            result = f"ok: approved by {name} ({len(count.counted)}/{policy.approvals})"
            if count.ok:
                models = await self._check_active_models(req.models)
                moved = sorted(m for m, (_, ep) in models.items()
                               if rec.get("request_epochs", {}).get(m, ep) != ep)
                if moved:
                    raise FailedPrecondition(f"{', '.join(moved)} was halted since request {rid[:16]} was made: "
                                             "it is void; ask again")
                txn.checks.update({f"models/{m}": rev for m, (rev, _) in models.items()})
                if req.extends:
                    await self._extend(txn, rec, req, now)
                    result += f"; grant {req.extends[:16]} extended"
                else:
                    rec.update(state="active", activated_at_ns=now, not_after_ns=now + req.duration_s * NS,
                               epochs={m: ep for m, (_, ep) in models.items()})
                    for g in req.grantee.keys():
                        txn.puts[f"{GRANTEES}{g}/{rid}"] = encode_canonical({"artifacts": list(req.artifacts)})
                    result += "; grant active"
                txn.puts.update(self._notify("access.granted", {"request": view(rec, now)}))
            txn.puts[key] = encode_canonical(rec)
            return Plan(txn, result), view(rec, now)

        return await self.audit.mutate(caller, "AccessApprove", f"access/{rid}", plan)

    async def _extend(self, txn: Txn, rec: dict[str, Any], req: AccessRequest, now: int) -> None:
        pkey = f"{REQUESTS}{req.extends}"
        pentry = await self.store.get(pkey)
        if pentry is None:
            raise NotFound(f"grant {req.extends[:16]} not found")
        parent = dict(decode_canonical(pentry.value))
        if effective_state(parent, now, await self._epochs(parent)) != "active":
            raise FailedPrecondition(f"grant {req.extends[:16]} is no longer active: it cannot be extended")
        parent["not_after_ns"] = max(parent["not_after_ns"], now + req.duration_s * NS)
        parent.setdefault("extended_by", []).append(req.id)
        txn.checks[pkey] = pentry.mod_revision
        txn.puts[pkey] = encode_canonical(parent)
        rec.update(state="applied", activated_at_ns=now, not_after_ns=parent["not_after_ns"])

    async def revoke(self, caller: Caller, ref: str, reason: str) -> dict[str, Any]:
        """End a grant, or withdraw a pending request, now. Raises AccessError, NotFound, FailedPrecondition."""
        rid = (await self._entry(ref)).key[len(REQUESTS):]
        key = f"{REQUESTS}{rid}"
        check_reason(reason)

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry, rec, now, req, state = await self._current(key, rid, ("pending", "active"),
                                                              "nothing to revoke")
            rec.update(state="revoked", revoked={"at_ns": now, "by": caller.principal, "reason": reason})
            txn = Txn(checks={key: entry.mod_revision}, puts={key: encode_canonical(rec)},
                      deletes=[f"{GRANTEES}{g}/{rid}" for g in req.grantee.keys()])
            txn.puts.update(self._notify("access.revoked", {"request": view(rec, now)}))
            return Plan(txn, f"ok: revoked ({state} before)"), view(rec, now)

        return await self.audit.mutate(caller, "AccessRevoke", f"access/{rid}", plan)

    async def break_glass(self, caller: Caller, ref: str, signature: Signature) -> dict[str, Any]:
        """Activate a pending request without a second approver, in an emergency: only where the
        policy allows it, for at most BREAK_GLASS_MAX, and only by the requester signing it with
        their own approver key (so the use is theirs beyond doubt). Audited as AccessBreakGlass;
        the rules raise a high-severity incident for every one. Raises AccessError,
        FailedPrecondition, NotFound."""
        rid = (await self._entry(ref)).key[len(REQUESTS):]
        key = f"{REQUESTS}{rid}"

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry, rec, now, req, _ = await self._current(key, rid, ("pending",),
                                                          "break-glass activates a pending one")
            if req.requester != caller.principal:
                raise AccessError("break-glass: only the requester may break the glass on their own request")
            if req.extends:
                raise AccessError("break-glass does not extend grants: make a new request")
            if req.duration_s > BREAK_GLASS_MAX:
                raise AccessError(f"a break-glass grant lasts at most {BREAK_GLASS_MAX}s; ask for less (--for)")
            policy, revs = await self.lineage_policy(req.model, req.artifacts)
            if not policy.break_glass:
                raise FailedPrecondition(f"the access policy of {req.model} does not allow break-glass")
            approvers = await self.approvers()
            owner = next((a for a in approvers if a.key(signature.key_id) is not None), None)
            if owner is None or caller.principal not in owner.principals:
                raise AccessError("break-glass: the signing key is not a registered key of your certificate identity")
            why = owner.key(signature.key_id).verify(  # type: ignore[union-attr]
                signature.sig, req.signature_input(), namespace=APPROVAL_NAMESPACE)
            if why is not None:
                raise AccessError(f"break-glass: signature does not verify: {why}")
            models = await self._check_active_models(req.models)
            rec.update(state="active", activated_at_ns=now, not_after_ns=now + req.duration_s * NS, break_glass=True,
                       epochs={m: ep for m, (_, ep) in models.items()},
                       approvals=[Approval(key_id=signature.key_id, sig=signature.sig, principal=caller.principal,
                                           role=caller.role, cert_sha256=caller.cert_sha256, at_ns=now).to_json()])
            txn = Txn(checks={key: entry.mod_revision, **revs,
                              **{f"models/{m}": rev for m, (rev, _) in models.items()}},
                      puts={key: encode_canonical(rec)})
            for g in req.grantee.keys():
                txn.puts[f"{GRANTEES}{g}/{rid}"] = encode_canonical({"artifacts": list(req.artifacts)})
            txn.puts.update(self._notify("access.break-glass", {"request": view(rec, now)}, severity="high"))
            return Plan(txn, f"ok: BREAK-GLASS grant {rid[:16]} by {owner.name} for {req.grantee.describe()}"), \
                view(rec, now)

        return await self.audit.mutate(caller, "AccessBreakGlass", f"access/{rid}", plan)

    # -- the release check -----------------------------------------------------------

    async def lineage_models(self, artifact_ids: Sequence[str]) -> list[str]:
        """The models of ``artifact_ids`` and of every artifact they derive from."""
        ids = list(dict.fromkeys([*artifact_ids, *await self.registry.ancestors(list(artifact_ids))]))
        recs = await self.store.get_many([f"artifacts/{a}" for a in ids])
        return sorted({decode_canonical(e.value)["model"] for e in recs.values()})

    async def _unproven(self, rec: Mapping[str, Any], artifact: str, grantee: str, policy: AccessPolicy,
                        approvers: Sequence[Approver]) -> str:
        """Why the signed request and approvals in ``rec`` do not prove an active grant of
        ``artifact`` to ``grantee`` under ``policy`` (``""`` if they do): the body hashes to the
        record's id and names both; the approvals count as the policy asks now (break-glass: the
        requester's own signature, within BREAK_GLASS_MAX); ``not_after`` lies within what the
        signed bodies allow (the request's, or an approved extension's, deadline plus duration)."""
        body = AccessRequest.decode(rec["body"].encode())
        if body.id != rec["id"] or artifact not in body.artifacts or grantee not in body.grantee.keys():
            return "does not match its signed request"
        approvals = [Approval.from_json(a) for a in rec["approvals"]]
        if rec["break_glass"]:
            owner = next((a for a in approvers if body.requester in a.principals), None)
            key = owner.key(approvals[0].key_id) if owner is not None and len(approvals) == 1 else None
            if (key is None or approvals[0].principal != body.requester or body.duration_s > BREAK_GLASS_MAX
                    or key.verify(approvals[0].sig, body.signature_input(), namespace=APPROVAL_NAMESPACE)):
                return "is break-glass without the requester's own signature"
        elif not count_approvals(body, approvals, approvers, policy).ok:
            return (f"has fewer approvals than the policy now asks ({policy.approvals} by {policy.approver_role}, "
                    "each a valid signature over this request)")
        limit = (body.expires_at + body.duration_s) * NS
        if rec["not_after_ns"] > limit:
            for ext_id in rec.get("extended_by", []):
                entry = await self.store.get(f"{REQUESTS}{ext_id}")
                ext = json.loads(entry.value) if entry is not None else None
                if ext is None:
                    continue
                ebody = AccessRequest.decode(ext["body"].encode())
                if (ebody.id == ext_id and ebody.extends == rec["id"] and count_approvals(
                        ebody, [Approval.from_json(a) for a in ext["approvals"]], approvers, policy).ok):
                    limit = max(limit, (ebody.expires_at + ebody.duration_s) * NS)
        return "lasts longer than its signed requests allow" if rec["not_after_ns"] > limit else ""

    async def release_grant(self, caller: Caller, artifact: ArtifactRecord,
                            model_record: Mapping[str, Any]) -> tuple[dict[str, int], GrantUse | None]:
        """What a key release of ``artifact`` to ``caller`` depends on: Store key -> revision
        (the policy records, the grant), and the grant used (None when no policy in the
        artifact's lineage requires one: a derivative of a model under the two-person rule is
        under it too). Reads only. Raises NoGrant."""
        policy, deps = await self.lineage_policy(artifact.model, [artifact.id], model_record)
        if not policy.required:
            return deps, None
        grantee = f"h:{caller.principal}" if caller.role == "agent" else f"p:{caller.principal}"
        index = await self.store.range(f"{GRANTEES}{grantee}/")
        # Index values are canonical {"artifacts": [ids]} written by this service: a quoted
        # 64-hex id can only match a whole element, so no decode is needed to filter.
        needle = f'"{artifact.id}"'.encode()
        ids = [e.key.rsplit("/", 1)[1] for e in index if needle in e.value]
        now = self.clock()
        epoch = model_epoch(model_record)
        why = "no grant names it"
        candidates: list[tuple[dict[str, Any], str, int]] = []
        recs = await self.store.get_many([f"{REQUESTS}{i}" for i in ids])
        for k, entry in recs.items():
            rec = json.loads(entry.value)  # written by this service in canonical form; read on every unwrap
            state = effective_state(rec, now)
            if state != "active":
                why = f"grant {rec['id'][:16]} is {state}"
            elif rec["epochs"].get(artifact.model) != epoch:
                why = f"grant {rec['id'][:16]} was revoked by a halt of {artifact.model}"
            elif rec["model"] != artifact.model and not policy.derivatives:
                why = f"grant {rec['id'][:16]} is for {rec['model']}; the policy does not extend it to derivatives"
            elif rec["break_glass"] and not policy.break_glass:
                why = f"grant {rec['id'][:16]} is break-glass and {artifact.model}'s policy no longer allows it"
            else:
                candidates.append((rec, k, entry.mod_revision))
        # The longest-lived grant that its own signatures still prove: the record alone is not
        # trusted (an edited Store could mark anything active), the signed request and approvals are.
        best: GrantUse | None = None
        approvers: list[Approver] | None = None
        for rec, k, rev in sorted(candidates, key=lambda c: -int(c[0]["not_after_ns"])):
            approvers = approvers if approvers is not None else await self.approvers()
            unproven = await self._unproven(rec, artifact.id, grantee, policy, approvers)
            if unproven:
                why = f"grant {rec['id'][:16]} {unproven}"
                continue
            best = GrantUse(rec["id"], rec["not_after_ns"], rec["policy"]["on_expiry"], k, rev)
            break
        if best is None:
            who = f"host {caller.principal}" if caller.role == "agent" else f"principal {caller.principal}"
            raise NoGrant(f"no active access grant for {who} on artifact {artifact.id[:12]} of model "
                          f"{artifact.model} ({why}): custos access request --model {artifact.model} ...")
        deps[best.key] = best.revision
        return deps, best


def strictest(policies: Sequence[AccessPolicy]) -> AccessPolicy:
    """What a set of policies asks together: the first's role and derivatives rule, the most
    approvals, the shortest lifetime, stop if any stops, break-glass only if all allow it.
    Raises AccessError if the required ones want approvers of different roles."""
    first = policies[0]
    roles = {p.approver_role for p in policies if p.required}
    if len(roles) > 1:
        raise AccessError(f"the models in this lineage want approvers of different roles "
                          f"({', '.join(sorted(roles))}): ask for each model on its own")
    required = [p for p in policies if p.required]
    return AccessPolicy(required=bool(required), approvals=max(p.approvals for p in policies),
                        approver_role=roles.pop() if roles else first.approver_role,
                        max_lifetime_s=min(p.max_lifetime_s for p in policies),
                        derivatives=all(p.derivatives for p in required) if required else first.derivatives,
                        on_expiry="stop" if any(p.on_expiry == "stop" for p in required) else first.on_expiry,
                        break_glass=all(p.break_glass for p in required))


def view(rec: Mapping[str, Any], now_ns: int, epochs: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A record as shown: the request fields, approvals and the state now."""
    req = AccessRequest.decode(rec["body"].encode())
    return {
        "activated_at_ns": rec["activated_at_ns"], "approvals": list(rec["approvals"]),
        "artifacts": list(req.artifacts), "body": rec["body"], "break_glass": rec["break_glass"],
        "counted": list(rec["counted"]), "created_ns": rec["created_ns"], "duration_s": req.duration_s,
        "expires_ns": rec["expires_ns"], "extends": req.extends, "hosts": list(req.grantee.hosts),
        "id": rec["id"], "model": req.model, "models": list(req.models), "needed": rec["policy"]["approvals"],
        "not_after_ns": rec["not_after_ns"], "on_expiry": rec["policy"]["on_expiry"],
        "principal": req.grantee.principal, "reason": req.reason, "requester": req.requester,
        "revoked": rec["revoked"], "state": effective_state(rec, now_ns, epochs),
        "approver_role": rec["policy"]["approver_role"], "summary": req.summary(),
    }
