"""`custos push` and `custos pull`: encrypted upload, verified download."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from custos.blobs.url import open_blob_store
from custos.cli.artifacts import artifact_json, parse_parents
from custos.cli.common import Conn, Out, size
from custos.client.transfer import Pusher, PushState, default_state_dir, manifest_of, pull_into, this_host
from custos.client.wire import RELATION_TO_PB, RELATIONS
from custos.core.keymaterial import zeroize
from custos.errors import (
    InvalidInput,
)
from custos.fs.hashing import build_manifest
from custos.v1 import keys_pb2, keys_pb2_grpc, registry_pb2


class _Progress:
    """A one-line progress meter on stderr, only when it is a terminal."""
    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = max(1, total), label, 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()

        self.lock = threading.Lock()
        self.last = 0.0

    def __call__(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.tty and (now - self.last > 0.1 or self.done >= self.total):
                self.last = now
                rate = self.done / max(1e-6, now - self.t0)
                pct = 100 * self.done / self.total
                sys.stderr.write(f"\r{self.label} {pct:5.1f}%  {size(self.done)} / {size(self.total)}"
                                 f"  {size(int(rate))}/s   ")
                sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _blobs_for(ns: argparse.Namespace, advertised: str) -> Any:
    url = ns.blobs or os.environ.get("CUSTOS_BLOBS") or advertised
    if not url:
        raise InvalidInput("no blob store: the control plane did not advertise one; set CUSTOS_BLOBS")
    return open_blob_store(url)


def cmd_push(ns: argparse.Namespace, out: Out) -> int:
    parents = parse_parents(ns)
    c = Conn(ns)
    refs = []
    for pid, rel in parents:
        a = c.call(c.registry().GetArtifact, registry_pb2.GetArtifactRequest(id=pid)).artifact
        refs.append(registry_pb2.ParentRef(artifact_id=a.id, relation=RELATION_TO_PB[rel]))
    root = Path(ns.dir)
    manifest = build_manifest(root)
    keys = keys_pb2_grpc.KeysStub(c.channel)
    req = keys_pb2.CreateDataKeyRequest(model=ns.model, manifest=manifest.encode(), parents=refs)
    try:
        resp = c.call(keys.CreateDataKey, req)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS or "concurrently" not in (exc.details() or ""):
            raise
        resp = c.call(keys.CreateDataKey, req)
    aid = resp.artifact_id
    if resp.already_stored:
        art = c.call(c.registry().GetArtifact, registry_pb2.GetArtifactRequest(id=aid)).artifact
        out.emit({**artifact_json(art), "already_stored": True},
                 f"artifact {aid} is already stored; nothing to push")
        return 0
    key = bytearray(resp.data_key)
    state = PushState.load(Path(ns.state_dir or default_state_dir()) / f"{aid}.json")
    progress = _Progress(manifest.total_size, "push")
    try:
        blobs = _blobs_for(ns, resp.blob_store)
        pusher = Pusher(blobs=blobs, data_key=key, artifact_id=aid, manifest=manifest, root=root,
                        state=state, resumed=resp.resumed, progress=progress)
        stats = pusher.run()
    finally:
        from custos.core.keymaterial import zeroize

        zeroize(key)
        progress.close()
    reg = c.call(c.registry().RegisterStoredArtifact,
                 registry_pb2.RegisterStoredArtifactRequest(artifact_id=aid))
    state.clear()
    data = {**artifact_json(reg.artifact), "stored": True, "resumed": resp.resumed, **stats.as_dict()}
    rate = stats.bytes / max(stats.seconds, 1e-6)
    out.emit(data, f"pushed artifact {aid}\n  model {reg.artifact.model}, {stats.files} files, "
                   f"{size(stats.bytes)} encrypted in {stats.seconds:.2f}s ({size(int(rate))}/s)"
                   + (f", resumed: {stats.parts_skipped} parts and {stats.objects_skipped} files already uploaded"
                      if resp.resumed else ""))
    return 0


def cmd_pull(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    dest = Path(ns.dest).absolute()
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise InvalidInput(f"{dest} already exists")
    keys = keys_pb2_grpc.KeysStub(c.channel)
    resp = c.call(keys.UnwrapDataKey, keys_pb2.UnwrapDataKeyRequest(artifact_id=ns.artifact, purpose="pull"))
    key = bytearray(resp.data_key)
    art = resp.artifact
    progress = _Progress(art.total_size, "pull")
    try:
        blobs = _blobs_for(ns, art.blob_store)
        stats = pull_into(blobs, data_key=key, artifact_id=art.id, manifest=manifest_of(art),
                          objects={o.path: o.key for o in art.objects}, dest=dest, progress=progress)
    finally:
        zeroize(key)
        progress.close()
    copy = c.call(c.registry().RecordCopy, registry_pb2.RecordCopyRequest(
        artifact_id=art.id, host=this_host(), path=str(dest), form=registry_pb2.COPY_FORM_PLAINTEXT)).copy
    rate = stats.bytes / max(stats.seconds, 1e-6)
    out.emit({"artifact_id": art.id, "model": art.model, "dest": str(dest), "copy_id": copy.id,
              **stats.as_dict()},
             f"pulled artifact {art.id} into {dest}\n  {stats.files} files, {size(stats.bytes)} verified "
             f"in {stats.seconds:.2f}s ({size(int(rate))}/s)")
    return 0



def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ps = sub.add_parser("push", parents=[common], help="encrypt DIR locally and upload it as an artifact of MODEL")
    ps.add_argument("model")
    ps.add_argument("dir")
    ps.add_argument("--parent", action="append", help="parent artifact id (repeat for merges)")
    ps.add_argument("--relation", action="append", help=f"relation to the parent: {', '.join(RELATIONS)}")
    ps.add_argument("--blobs", help="blob store URL (default: the one the control plane uses; env CUSTOS_BLOBS)")
    ps.add_argument("--state-dir", help="where resume state is kept (default ~/.local/state/custos/push)")
    ps.set_defaults(fn=cmd_push)
    pl = sub.add_parser("pull", parents=[common], help="download, decrypt and verify an artifact into DEST")
    pl.add_argument("artifact")
    pl.add_argument("dest")
    pl.add_argument("--blobs", help="blob store URL (default: the artifact's; env CUSTOS_BLOBS)")
    pl.set_defaults(fn=cmd_pull)


