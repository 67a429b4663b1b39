"""Signer sets: the root of trust for orders.

A signer set is a versioned list of executives' public keys with a threshold
per action (how many distinct keys must sign a ``drill``, ``halt``, ``lift``,
``destroy`` order, or the next signer set: ``rotate``). Version 1 is installed
at bootstrap and pinned by every agent at enrollment. Version n+1 is trusted
only when a ``rotate`` threshold of version n signed it (as TUF rotates its
root) *and* a ``rotate`` threshold of its own keys did (proof that the new
holders have their keys), and only if it names version n as its predecessor.
``TrustedSignerSets`` walks that chain forward and never back.

Keys are Ed25519 (raw signatures) or OpenSSH keys — ``ssh-ed25519``,
``sk-ssh-ed25519@openssh.com`` (FIDO tokens), ``ecdsa-sha2-nistp256``,
``sk-ecdsa-sha2-nistp256@openssh.com`` — whose holders sign with
``ssh-keygen -Y sign``. A key id names the key pair (algorithm + public point),
not the way it signs, so one private key can never hold two votes.

Encodings and rules are specified in docs/orders.md; known-answer vectors live
in tests/core/vectors/. Pure logic: key files are read and written by
custos.client.signerkeys.

The package's modules: ``base`` (domains, limits, errors, strict decoding), ``keys``,
``signatures``, ``sets`` (a signer set and the threshold check) and ``rotation``.
"""

from __future__ import annotations

from custos.core.signers.base import (
    MAX_KEY_ID_CHARS,
    MAX_KEYS,
    MAX_SIG_CHARS,
    MAX_SIGNATURES,
    MAX_SIGNER_SET_BYTES,
    SIGNER_KEY_DOMAIN,
    SIGNER_NAME,
    SIGNER_SET_DOMAIN,
    SIGNER_SET_ENCODING,
    SIGNER_SET_NAMESPACE,
    Failure,
    NonCanonicalSignerSet,
    SignerSetError,
    decode_strict,
)
from custos.core.signers.keys import (
    KEYTYPE_ECDSA_P256,
    KEYTYPE_ED25519,
    KEYTYPE_SK_ECDSA_P256,
    KEYTYPE_SK_ED25519,
    KEYTYPE_WEBAUTHN,
    KEYTYPES,
    KeyFileError,
    SignerKey,
    generate_ed25519,
    key_id_of,
    private_key_from_pem,
    private_key_pem,
    public_key_from_hex,
    public_key_from_openssh,
    public_key_hex,
    public_key_to_openssh,
)
from custos.core.signers.rotation import (
    RotationReason,
    RotationRejected,
    RotationVerification,
    TrustedSignerSets,
    verify_rotation,
)
from custos.core.signers.sets import (
    ACTIONS,
    DEV_SIGNER_NAMES,
    DEV_THRESHOLDS,
    SignerSet,
    ThresholdResult,
    check_threshold,
)
from custos.core.signers.signatures import Signature, decode_signatures, encode_signatures, sign_raw, sign_ssh

__all__ = [
    "ACTIONS",
    "DEV_SIGNER_NAMES",
    "DEV_THRESHOLDS",
    "KEYTYPES",
    "KEYTYPE_ECDSA_P256",
    "KEYTYPE_ED25519",
    "KEYTYPE_SK_ECDSA_P256",
    "KEYTYPE_SK_ED25519",
    "KEYTYPE_WEBAUTHN",
    "MAX_KEYS",
    "MAX_KEY_ID_CHARS",
    "MAX_SIGNATURES",
    "MAX_SIGNER_SET_BYTES",
    "MAX_SIG_CHARS",
    "SIGNER_KEY_DOMAIN",
    "SIGNER_NAME",
    "SIGNER_SET_DOMAIN",
    "SIGNER_SET_ENCODING",
    "SIGNER_SET_NAMESPACE",
    "Failure",
    "KeyFileError",
    "NonCanonicalSignerSet",
    "RotationReason",
    "RotationRejected",
    "RotationVerification",
    "Signature",
    "SignerKey",
    "SignerSet",
    "SignerSetError",
    "ThresholdResult",
    "TrustedSignerSets",
    "check_threshold",
    "decode_signatures",
    "decode_strict",
    "encode_signatures",
    "generate_ed25519",
    "key_id_of",
    "private_key_from_pem",
    "private_key_pem",
    "public_key_from_hex",
    "public_key_from_openssh",
    "public_key_hex",
    "public_key_to_openssh",
    "sign_raw",
    "sign_ssh",
    "verify_rotation",
]
