"""`push`: the whole push protocol — parents, hash, data key, encrypted upload, register as stored.

Hash the directory into a manifest, get the artifact's data key (Keys.CreateDataKey),
encrypt and upload every file (:class:`custos.client.transfer.Pusher`), then ask
the control plane to register the artifact as stored — which it does only when
every object is there with the right size and header. The data key is zeroized
as soon as the upload ends, however it ends; a push that fails resumes from its
state file on the next try.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from custos.client.registry import get_artifact, register_stored, resolve_parents
from custos.client.session import Client
from custos.client.transfer import (
    Progress,
    ProgressTally,
    Pusher,
    PushState,
    TransferStats,
    default_state_dir,
    open_blobs,
)
from custos.core.keymaterial import zeroize
from custos.core.manifest import Manifest
from custos.errors import Conflict
from custos.fs.hashing import build_manifest
from custos.v1 import keys_pb2, registry_pb2


@dataclass(frozen=True)
class PushResult:
    """What a push did: the artifact as registered, and whether there was anything to upload."""

    artifact: registry_pb2.Artifact
    already_stored: bool = False
    resumed: bool = False
    stats: TransferStats = field(default_factory=TransferStats)


def create_data_key(client: Client, model: str, manifest: Manifest,
                    parents: Sequence[registry_pb2.ParentRef] = ()) -> keys_pb2.CreateDataKeyResponse:
    """The artifact's data key (the same one again for a push that resumes). Another client
    creating the same artifact at the same moment makes the server refuse one of the two:
    that one asks again, once."""
    req = keys_pb2.CreateDataKeyRequest(model=model, manifest=manifest.encode(), parents=list(parents))
    try:
        return client.call(client.keys.CreateDataKey, req, keys_pb2.CreateDataKeyResponse)
    except Conflict as exc:
        if "concurrently" not in str(exc):
            raise
    return client.call(client.keys.CreateDataKey, req, keys_pb2.CreateDataKeyResponse)


def push(client: Client, model: str, root: str | os.PathLike[str], *, parents: Sequence[tuple[str, str]] = (),
         blobs: str | None = None, state_dir: str | os.PathLike[str] | None = None,
         progress: Progress | None = None, hash_progress: Progress | None = None) -> PushResult:
    """Encrypt the directory ``root`` here and upload it as an artifact of ``model``.

    ``hash_progress`` follows the hashing before anything is sent, ``progress`` the
    encryption and upload (each gets bytes done and bytes in all).

    ``parents``: (artifact id or prefix, relation) pairs; ``blobs``: a blob store URL
    instead of CUSTOS_BLOBS or the one the control plane advertises; ``state_dir``:
    where resume state is kept (default :func:`default_state_dir`). Raises
    InvalidInput (unreadable file, no blob store), NotFound (parent, model),
    IntegrityError (a file changed while it was pushed), Unauthorized,
    FailedPrecondition (halted model), BackendUnavailable.
    """
    refs = resolve_parents(client, parents)
    path = Path(root)
    if hash_progress is not None:
        from custos.fs.hashing import plan_directory

        tally = ProgressTally(sum(_size(p.abspath) for p in plan_directory(path)), hash_progress)
        manifest = build_manifest(path, progress=tally)
    else:
        manifest = build_manifest(path)
    resp = create_data_key(client, model, manifest, refs)
    aid = resp.artifact_id
    key = bytearray(resp.data_key)
    try:
        if resp.already_stored:
            return PushResult(artifact=get_artifact(client, aid), already_stored=True, resumed=resp.resumed)
        state = PushState.load(Path(state_dir or default_state_dir()) / f"{aid}.json")
        pusher = Pusher(blobs=open_blobs(blobs, resp.blob_store), data_key=key, artifact_id=aid, manifest=manifest,
                        root=path, state=state, resumed=resp.resumed,
                        progress=ProgressTally(manifest.total_size, progress))
        stats = pusher.run()
    finally:
        zeroize(key)
    artifact = register_stored(client, aid)
    state.clear()
    return PushResult(artifact=artifact, resumed=resp.resumed, stats=stats)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
