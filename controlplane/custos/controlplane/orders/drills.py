"""The installed drill register: what a drill may really halt (custos.core.drills).

The control plane keeps the newest signed register and checks every drill against it
with the same pure verifier the agents run; it sends the register with every order so
an agent can decide alone. Installing a register needs a rotate threshold of the
current signer set; the registry's ``--drill`` flag only says which models may be
declared.

Store keys:
    meta/drill-register         {"body": canonical register, "signatures": signature list}
"""

from __future__ import annotations

from typing import Any

from custos.controlplane.audit import AuditLog, Caller, Plan
from custos.controlplane.orders.chain import SignerChain
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.drills import (
    DrillRegister,
    DrillRegisterRejected,
    check_register,
    verify_register,
)
from custos.core.signers import Signature, decode_signatures, encode_signatures
from custos.errors import CustosError, FailedPrecondition

KEY = "meta/drill-register"


class DrillRegistry:
    """Read, prepare and install the signed drill register."""

    def __init__(self, store: Store, registry: Registry, audit: AuditLog, signers: SignerChain) -> None:
        self.store = store
        self.registry = registry
        self.audit = audit
        self.signers = signers

    async def stored(self) -> tuple[bytes, list[Signature], int]:
        """The installed register's bytes, signatures and Store revision (b"", [], 0: none)."""
        entry = await self.store.get(KEY)
        if entry is None:
            return b"", [], 0
        rec = decode_canonical(entry.value)
        return rec["body"].encode(), decode_signatures(rec["signatures"].encode()), entry.mod_revision

    async def trusted(self) -> DrillRegister | None:
        """The installed register if it still verifies under the current signer set (a
        rotation asks for it to be re-signed); None otherwise. Raises NoSignerSet."""
        body, sigs, _ = await self.stored()
        if not body:
            return None
        try:
            return verify_register(body, sigs, await self.signers.current_set())
        except CustosError:
            return None

    async def info(self, body: bytes | None = None, sigs: list[Signature] | None = None) -> dict[str, Any]:
        """The register (the installed one by default) as data for the API. Raises NoSignerSet."""
        if body is None:
            body, sigs, _ = await self.stored()
        current = await self.signers.current_set()
        out: dict[str, Any] = {"body": body, "signatures": encode_signatures(sigs or []), "version": 0,
                               "signer_set_version": 0, "models": [], "artifacts": [],
                               "threshold": current.threshold("rotate"), "signed_by": []}
        if body:
            reg = DrillRegister.decode(body)
            tally = check_register(body, sigs or [], current) if reg.signer_set_version == current.version else None
            out.update(version=reg.version, signer_set_version=reg.signer_set_version, models=list(reg.models),
                       artifacts=list(reg.artifacts), signed_by=list(tally.valid) if tally else [])
        return out

    async def prepare(self, *, add: list[str], remove: list[str]) -> DrillRegister:
        """The next register, unsigned: the installed models plus ``add`` minus ``remove``,
        with every artifact of those models, for the current signer set.

        Raises NotFound (unknown model), FailedPrecondition (a model not registered as a
        drill model), NoSignerSet.
        """
        body, _, _ = await self.stored()
        installed = DrillRegister.decode(body) if body else None
        models = (set(installed.models) if installed else set()) | set(add)
        models -= set(remove)
        artifacts: list[str] = []
        for name in sorted(models):
            model = await self.registry.get_model(name)
            if not model.get("drill"):
                raise FailedPrecondition(
                    f"model {name!r} is not registered as a drill model (custos model register --drill): "
                    "a production model cannot be declared drillable")
            artifacts += await self.registry.model_artifact_ids(name)
        current = await self.signers.current_set()
        return DrillRegister(version=(installed.version if installed else 0) + 1,
                             signer_set_version=current.version, models=tuple(sorted(models)),
                             artifacts=tuple(sorted(set(artifacts))))

    async def install(self, caller: Caller, *, body: bytes, signatures: bytes) -> DrillRegister:
        """Install a signed register: the next version, for the current signer set, signed
        by its rotate threshold, naming only drill models and their own artifacts.

        Raises InvalidInput (malformed), DrillRegisterRejected (signatures, version),
        FailedPrecondition (a production model or artifact named), NotFound, NoSignerSet.
        """
        sigs = decode_signatures(signatures)

        async def plan() -> tuple[Plan, DrillRegister]:
            old_body, _, revision = await self.stored()
            installed = DrillRegister.decode(old_body) if old_body else None
            register = verify_register(body, sigs, await self.signers.current_set(),
                                       trusted_version=installed.version + 1 if installed else 1)
            if installed is not None and register.version != installed.version + 1:
                raise DrillRegisterRejected(
                    f"drill register v{register.version} does not follow the installed v{installed.version}")
            await self._check_contents(register)
            value = encode_canonical({"body": body.decode(), "signatures": encode_signatures(sigs).decode()})
            result = (f"v{register.version}: {len(register.models)} drill models, "
                      f"{len(register.artifacts)} artifacts")
            return Plan(Txn(checks={KEY: revision}, puts={KEY: value}), result), register

        return await self.audit.mutate(caller, "SetDrillRegister", "drill-register", plan)

    async def _check_contents(self, register: DrillRegister) -> None:
        """Defence in depth: the signers could have been shown a wrong list; the control
        plane refuses one that names a production model or another model's artifact."""
        for name in register.models:
            if not (await self.registry.get_model(name)).get("drill"):
                raise FailedPrecondition(f"model {name!r} is not a drill model: it cannot be declared drillable")
        declared: dict[str, str] = {}  # file sha256 -> declared artifact
        for aid in register.artifacts:
            art = await self.registry.get_artifact(aid)
            if art.model not in register.models:
                raise FailedPrecondition(
                    f"artifact {aid[:12]} belongs to {art.model!r}, which the register does not declare")
            declared.update({f.sha256: aid for f in art.manifest.files if f.size > 0})
        # A drill artifact holding production bytes would let a drill stop production by
        # content: refused (agents spare such bytes in a drill anyway).
        for entry in await self.store.range("artifacts/"):
            other = await self.registry.get_artifact(entry.key.removeprefix("artifacts/"))
            if other.id in register.artifacts:
                continue
            for f in other.manifest.files:
                if f.sha256 in declared:
                    raise FailedPrecondition(
                        f"drill artifact {declared[f.sha256][:12]} holds the bytes of {f.path!r} of artifact "
                        f"{other.id[:12]} ({other.model!r}): a drill model must not share weights with another")


def register_scope(register: DrillRegister | None, models: list[str], artifacts: list[str]
                   ) -> tuple[list[str], list[str], list[str], list[str]]:
    """Split a drill's resolved scope into (real models, real artifacts, dry models, dry
    artifacts): only what the register declares really halts; the rest runs in dry-run."""
    declared_m = set(register.models) if register else set()
    declared_a = set(register.artifacts) if register else set()
    return ([m for m in models if m in declared_m], [a for a in artifacts if a in declared_a],
            [m for m in models if m not in declared_m], [a for a in artifacts if a not in declared_a])

