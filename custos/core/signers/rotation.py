"""Rotation: version n+1 is trusted only when signed by a rotate threshold of n and of its own keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from custos.core.signers.base import SIGNER_SET_NAMESPACE, Failure, NonCanonicalSignerSet, SignerSetError
from custos.core.signers.sets import SignerSet, ThresholdResult, check_threshold
from custos.core.signers.signatures import Signature
from custos.errors import IntegrityError, InvalidInput


class RotationRejected(IntegrityError):
    """A proposed signer set is not a valid successor of the trusted one."""

    def __init__(self, verification: RotationVerification) -> None:
        self.verification = verification
        super().__init__("signer-set rotation rejected: " + "; ".join(f.detail for f in verification.failures))


class RotationReason(StrEnum):
    """Stable codes for why a proposed signer set is refused."""

    MALFORMED = "malformed"
    NON_CANONICAL = "non_canonical"
    ROLLBACK = "rollback"  # older than the trusted version
    ALREADY_CURRENT = "already_current"  # the trusted set itself
    FORK = "fork"  # same version as the trusted one, different content
    SKIPPED_VERSION = "skipped_version"  # newer than trusted + 1
    BROKEN_CHAIN = "broken_chain"  # version n+1 whose previous is not the trusted set
    OLD_THRESHOLD_NOT_MET = "old_threshold_not_met"
    NEW_THRESHOLD_NOT_MET = "new_threshold_not_met"


@dataclass
class RotationVerification:
    """Outcome of checking a proposed signer set against the trusted one;
    truthy only when it is a valid successor."""

    current_version: int
    new_set: SignerSet | None = None
    old: ThresholdResult | None = None  # rotate threshold of the trusted set
    new: ThresholdResult | None = None  # rotate threshold of the proposed set
    failures: list[Failure] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures and self.new_set is not None

    @property
    def reasons(self) -> list[str]:
        return [f.code for f in self.failures]

    def fail(self, code: RotationReason, detail: str) -> None:
        self.failures.append(Failure(str(code), detail))

    def raise_if_invalid(self) -> SignerSet:
        """Return the new set; raise RotationRejected if it is not a valid successor."""
        if not self or self.new_set is None:
            raise RotationRejected(self)
        return self.new_set


def verify_rotation(current: SignerSet, new_set_bytes: bytes, signatures: Sequence[Signature]) -> RotationVerification:
    """Check ``new_set_bytes`` as the successor of ``current``. Never raises for bad data.

    Valid only if: it parses and is canonical; its version is exactly
    current + 1; its ``previous`` is ``current.id``; a ``rotate`` threshold of
    ``current`` signed it; and a ``rotate`` threshold of its own keys signed it.
    """
    if not isinstance(current, SignerSet) or not all(isinstance(s, Signature) for s in signatures):
        raise InvalidInput("verify_rotation wants a SignerSet and Signature values")  # a caller error
    result = RotationVerification(current_version=current.version)
    try:
        new = SignerSet.decode(new_set_bytes)
    except NonCanonicalSignerSet as exc:
        result.fail(RotationReason.NON_CANONICAL, str(exc))
        return result
    except SignerSetError as exc:
        result.fail(RotationReason.MALFORMED, str(exc))
        return result
    result.new_set = new
    if new.version < current.version:
        result.fail(RotationReason.ROLLBACK, f"version {new.version} is older than trusted version {current.version}")
    elif new.version == current.version:
        if new == current:
            result.fail(RotationReason.ALREADY_CURRENT, f"version {new.version} is already trusted")
        else:
            result.fail(
                RotationReason.FORK,
                f"a different version {new.version} than the trusted one: the signer-set history forked",
            )
    elif new.version > current.version + 1:
        result.fail(
            RotationReason.SKIPPED_VERSION,
            f"version {new.version} skips ahead of trusted version {current.version} (want {current.version + 1})",
        )
    elif new.previous != current.id:
        result.fail(RotationReason.BROKEN_CHAIN, f"version {new.version} does not extend the trusted version")
    message = new.signature_input()
    result.old = check_threshold(
        current, signatures, message, namespace=SIGNER_SET_NAMESPACE, threshold=current.threshold("rotate")
    )
    result.new = check_threshold(
        new, signatures, message, namespace=SIGNER_SET_NAMESPACE, threshold=new.threshold("rotate")
    )
    if not result.old:
        result.fail(
            RotationReason.OLD_THRESHOLD_NOT_MET,
            f"signed by {len(result.old.valid)} of the {result.old.threshold} trusted-set keys a rotation needs",
        )
    if not result.new:
        result.fail(
            RotationReason.NEW_THRESHOLD_NOT_MET,
            f"signed by {len(result.new.valid)} of the {result.new.threshold} new-set keys a rotation needs "
            "(the new holders must prove they have their keys)",
        )
    return result


class TrustedSignerSets:
    """The trusted signer set as a small state machine (cf. TUF's trusted metadata set).

    Starts from a pinned set; ``update`` moves to version n+1 only through a
    valid rotation and changes nothing when it raises. No rollback, no skipped
    version, no fork. Re-delivering the current set is a no-op.
    """

    def __init__(self, pinned: SignerSet) -> None:
        if not isinstance(pinned, SignerSet):
            raise InvalidInput("pinned signer set must be a SignerSet")
        self._current = pinned

    @classmethod
    def from_pinned_bytes(cls, data: bytes) -> TrustedSignerSets:
        """Raises SignerSetError."""
        return cls(SignerSet.decode(data))

    @property
    def current(self) -> SignerSet:
        return self._current

    @property
    def version(self) -> int:
        return self._current.version

    def verify(self, new_set_bytes: bytes, signatures: Sequence[Signature]) -> RotationVerification:
        """Check a proposed successor without changing anything."""
        return verify_rotation(self._current, new_set_bytes, signatures)

    def update(self, new_set_bytes: bytes, signatures: Sequence[Signature]) -> SignerSet:
        """Trust the proposed successor and return it. Raises RotationRejected (state unchanged)."""
        if isinstance(new_set_bytes, bytes | bytearray) and bytes(new_set_bytes) == self._current.encode():
            return self._current
        result = self.verify(new_set_bytes, signatures)
        self._current = result.raise_if_invalid()
        return self._current
