"""Envelope keys: one key-encryption key per model, one data key per artifact.

``VaultTransitProvider`` (Vault / OpenBao Transit) is the production backend;
``LocalKeyProvider`` (a local key file) is for development only. Both implement
:class:`KeyProvider` and pass the same conformance suite. See docs/keys.md.
"""

from custos.controlplane.keys.base import (
    DATA_KEY_BYTES,
    DataKey,
    KeyConflict,
    KeyDestroyed,
    KeyProvider,
    KeyState,
    KeySuspended,
    KeyVersionRetired,
    ProviderClosed,
    validate_context,
    validate_key_name,
    wrapped_key_version,
    zeroize,
)
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.keys.vault import VaultTransitProvider

__all__ = [
    "DATA_KEY_BYTES",
    "DataKey",
    "KeyConflict",
    "KeyDestroyed",
    "KeyProvider",
    "KeyState",
    "KeySuspended",
    "KeyVersionRetired",
    "LocalKeyProvider",
    "ProviderClosed",
    "VaultTransitProvider",
    "validate_context",
    "validate_key_name",
    "wrapped_key_version",
    "zeroize",
]
