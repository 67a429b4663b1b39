"""The signer-set chain: bootstrapping version 1, rotations, and the stored chain.

Store keys:
    signers/{version:06d}       {"set": canonical set, "signatures": rotation signatures}
"""

from __future__ import annotations

from pathlib import Path

from custos.client.signerkeys import dev_private_key
from custos.controlplane.audit import SYSTEM, AuditLog, Caller, Plan
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.signers import (
    DEV_SIGNER_NAMES,
    DEV_THRESHOLDS,
    SignerKey,
    SignerSet,
    decode_signatures,
    encode_signatures,
    verify_rotation,
)
from custos.errors import Conflict, FailedPrecondition, InvalidInput
from custos.fs.private import private_dir

FIRST = "signers/000001"


class NoSignerSet(FailedPrecondition):
    """No signer set is installed: orders are impossible until one is bootstrapped."""


def bootstrap_dev_signers(directory: Path) -> SignerSet:
    """Create exec1..exec5 (no passphrase, development only) and signer set v1."""
    private_dir(directory)
    keys = []
    for name in DEV_SIGNER_NAMES:
        path = directory / f"{name}.key"
        priv = dev_private_key(path)
        keys.append(SignerKey.from_ed25519(priv.public_key(), name=name))
    return SignerSet.bootstrap(keys, thresholds=DEV_THRESHOLDS)


class SignerChain:
    """The chain of signer sets in the Store, with two caches the synchronous paths read:
    the pinned version 1 (enrollment) and the whole chain (orders sent down streams)."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit
        self._pinned = b""
        self.cached: list[tuple[bytes, bytes]] = []  # as of the last refresh()

    async def install_bootstrap(self, signer_set: SignerSet) -> None:
        """Install version 1 if no set is installed yet (idempotent, audited). Raises InvalidInput."""
        if signer_set.version != 1:
            raise InvalidInput("only a version-1 signer set can be bootstrapped")
        if await self.store.get(FIRST) is not None:
            await self.refresh_pinned()
            return

        async def plan() -> tuple[Plan, None]:
            value = encode_canonical({"set": signer_set.encode().decode(), "signatures": "[]"})
            return Plan(Txn(checks={FIRST: 0}, puts={FIRST: value})), None

        try:
            await self.audit.mutate(SYSTEM, "BootstrapSignerSet", f"signer-set/{signer_set.id[:16]}", plan)
        except Conflict:
            pass
        await self.refresh_pinned()

    async def refresh_pinned(self) -> None:
        entry = await self.store.get(FIRST)
        self._pinned = decode_canonical(entry.value)["set"].encode() if entry else b""

    def pinned(self) -> bytes:
        """Version 1: what a newly enrolled agent pins (it follows rotations from there)."""
        return self._pinned

    async def load(self) -> list[tuple[bytes, bytes]]:
        """Every installed version, oldest first: (canonical set bytes, rotation signatures)."""
        out = []
        for e in await self.store.range("signers/"):
            rec = decode_canonical(e.value)
            out.append((rec["set"].encode(), rec["signatures"].encode()))
        return out

    async def refresh(self) -> None:
        """Reload ``cached`` from the Store."""
        self.cached = await self.load()

    async def current_set(self) -> SignerSet:
        """The newest installed set. Raises NoSignerSet."""
        chain = await self.load()
        if not chain:
            raise NoSignerSet("no signer set installed: orders cannot be verified")
        return SignerSet.decode(chain[-1][0])

    async def rotate(self, caller: Caller, *, new_set: bytes, signatures: bytes) -> SignerSet:
        """Install version n+1 if signed by a rotate threshold of n and of its own keys.

        Raises RotationRejected (IntegrityError), InvalidInput, NoSignerSet.
        """
        async def plan() -> tuple[Plan, SignerSet]:
            current = await self.current_set()
            sigs = decode_signatures(signatures)
            accepted = verify_rotation(current, new_set, sigs).raise_if_invalid()
            key = f"signers/{accepted.version:06d}"
            value = encode_canonical({"set": new_set.decode(), "signatures": encode_signatures(sigs).decode()})
            return Plan(Txn(checks={key: 0}, puts={key: value})), accepted

        return await self.audit.mutate(caller, "RotateSignerSet", "signer-set", plan)
