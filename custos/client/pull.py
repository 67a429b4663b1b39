"""`pull`: the whole pull protocol — data key, verified all-or-nothing decrypt, record the copy.

Unwrap the artifact's data key (Keys.UnwrapDataKey, audited), download, decrypt
and verify every file into DEST (:func:`pull_artifact`, which the agent's
supervised workloads use too), zeroize the key however that ends, and record the
plaintext copy (Registry.RecordCopy).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from custos.blobs.base import BlobStore
from custos.client.registry import record_copy
from custos.client.session import Client
from custos.client.transfer import (
    Progress,
    ProgressTally,
    TransferStats,
    check_destination,
    open_blobs,
    pull_into,
)
from custos.core.keymaterial import zeroize
from custos.core.manifest import Manifest, decode_manifest
from custos.v1 import keys_pb2, registry_pb2


@dataclass(frozen=True)
class PullResult:
    """What a pull did: the artifact, where its verified plaintext is, the copy recorded."""

    artifact: registry_pb2.Artifact
    dest: Path
    copy: registry_pb2.Copy
    stats: TransferStats


def this_host() -> str:
    """This host's name as copies record it: CUSTOS_HOST, else the host name."""
    return os.environ.get("CUSTOS_HOST") or socket.gethostname()


def manifest_of(artifact: registry_pb2.Artifact) -> Manifest:
    """The manifest an artifact message carries. Raises InvalidInput if it does not decode."""
    return decode_manifest(bytes(artifact.manifest))


def unwrap_data_key(client: Client, ref: str, purpose: str) -> keys_pb2.UnwrapDataKeyResponse:
    """The data key of artifact ``ref`` (id or prefix) and the artifact; audited with ``purpose``."""
    req = keys_pb2.UnwrapDataKeyRequest(artifact_id=ref, purpose=purpose)
    return client.call(client.keys.UnwrapDataKey, req, keys_pb2.UnwrapDataKeyResponse)


def pull_artifact(blobs: BlobStore, *, data_key: bytearray, artifact: registry_pb2.Artifact, dest: Path,
                  manifest: Manifest | None = None, progress: Progress | None = None,
                  workers: int = 8) -> TransferStats:
    """Decrypt ``artifact`` from ``blobs`` into ``dest``, every file checked against the manifest the
    message carries (``manifest``: that manifest, when the caller has decoded it already); ``dest``
    appears only when all verified. The caller zeroizes ``data_key``.

    Raises InvalidInput (``dest`` exists and is not empty, is a symbolic link, cannot be written),
    IntegrityError (the manifest does not hash to the id, tampered, truncated or missing ciphertext),
    BackendUnavailable.
    """
    manifest = manifest or manifest_of(artifact)
    return pull_into(blobs, data_key=data_key, artifact_id=artifact.id, manifest=manifest,
                     objects={o.path: o.key for o in artifact.objects}, dest=dest,
                     progress=ProgressTally(manifest.total_size, progress), workers=workers)


def pull(client: Client, ref: str, dest: str | os.PathLike[str], *, blobs: str | None = None,
         progress: Progress | None = None) -> PullResult:
    """Pull artifact ``ref`` (id or prefix) into ``dest``, verified, and record the copy on this host.

    ``blobs``: a blob store URL instead of CUSTOS_BLOBS or the artifact's. Raises InvalidInput
    (``dest`` exists, is a symbolic link or not a UTF-8 name), NotFound, Unauthorized (no key for
    this caller), FailedPrecondition (halted, not stored), IntegrityError (tampering, truncated
    ciphertext), BackendUnavailable.
    """
    path = check_destination(Path(dest))  # before the key is unwrapped (and audited)
    resp = unwrap_data_key(client, ref, "pull")
    key = bytearray(resp.data_key)
    artifact = resp.artifact
    try:
        stats = pull_artifact(open_blobs(blobs, artifact.blob_store), data_key=key, artifact=artifact, dest=path,
                              progress=progress)
    finally:
        zeroize(key)
    copy = record_copy(client, artifact.id, host=this_host(), path=str(path), form=registry_pb2.COPY_FORM_PLAINTEXT)
    return PullResult(artifact=artifact, dest=path, copy=copy, stats=stats)
