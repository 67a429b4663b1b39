"""`custos push` and `custos pull`: encrypted upload, verified download."""

from __future__ import annotations

import argparse
import sys
import time

from custos.cli.artifacts import artifact_json, parse_parents
from custos.cli.common import connect
from custos.cli.output import Out, size
from custos.client.pull import pull
from custos.client.push import push
from custos.client.wire import RELATIONS


class _Progress:
    """A one-line progress meter on stderr (phase, percent, bytes, rate, ETA), only when stderr
    is a terminal: quiet in scripts, CI and pipes."""

    def __init__(self, label: str, *, tty: bool | None = None) -> None:
        self.label = label
        self.t0 = 0.0
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.last = 0.0
        self.shown = False

    def line(self, done: int, total: int, now: float) -> str:
        elapsed = max(1e-6, now - self.t0)
        rate = done / elapsed
        pct = 100 * done / max(1, total)
        eta = "done" if done >= total else (f"ETA {_clock((total - done) / rate)}" if done else "ETA -")
        return (f"{self.label:<9} {pct:5.1f}%  {size(done)} / {size(max(1, total))}  {size(int(rate))}/s  "
                f"{eta}")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        self.t0 = self.t0 or now  # the clock starts with this phase
        if self.tty and (now - self.last > 0.1 or done >= total):
            self.last = now
            sys.stderr.write("\r" + self.line(done, total, now) + "   ")
            sys.stderr.flush()
            self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cmd_push(ns: argparse.Namespace, out: Out) -> int:
    parents = parse_parents(ns)
    client = connect(ns)
    hashing, progress = _Progress("hashing"), _Progress("uploading")

    def upload(done: int, total: int) -> None:
        hashing.close()  # the hashing line ends where the upload's begins
        progress(done, total)

    try:
        res = push(client, ns.model, ns.dir, parents=parents, blobs=ns.blobs, state_dir=ns.state_dir,
                   progress=upload, hash_progress=hashing)
    finally:
        hashing.close()
        progress.close()
    aid = res.artifact.id
    if res.already_stored:
        out.emit({**artifact_json(res.artifact), "already_stored": True},
                 f"artifact {aid} is already stored; nothing to push")
        return 0
    stats = res.stats
    data = {**artifact_json(res.artifact), "stored": True, "resumed": res.resumed, **stats.as_dict()}
    rate = stats.bytes / max(stats.seconds, 1e-6)
    out.emit(data, f"pushed artifact {aid}\n  model {res.artifact.model}, {stats.files} files, "
                   f"{size(stats.bytes)} encrypted in {stats.seconds:.2f}s ({size(int(rate))}/s)"
                   + (f", resumed: {stats.parts_skipped} parts and {stats.objects_skipped} files already uploaded"
                      if res.resumed else ""))
    return 0


def cmd_pull(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    progress = _Progress("pulling")
    try:
        res = pull(client, ns.artifact, ns.dest, blobs=ns.blobs, progress=progress)
    finally:
        progress.close()
    art, stats = res.artifact, res.stats
    rate = stats.bytes / max(stats.seconds, 1e-6)
    out.emit({"artifact_id": art.id, "model": art.model, "dest": str(res.dest), "copy_id": res.copy.id,
              **stats.as_dict()},
             f"pulled artifact {art.id} into {res.dest}\n  {stats.files} files, {size(stats.bytes)} verified "
             f"in {stats.seconds:.2f}s ({size(int(rate))}/s)")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ps = sub.add_parser("push", parents=[common], help="encrypt DIR locally and upload it as an artifact of MODEL")
    ps.add_argument("model", help="the registered model the weights belong to")
    ps.add_argument("dir", help="the directory of weight files (hashed, encrypted here, uploaded)")
    ps.add_argument("--parent", action="append", help="parent artifact id (repeat for merges)")
    ps.add_argument("--relation", action="append", help=f"relation to the parent: {', '.join(RELATIONS)}")
    ps.add_argument("--blobs", help="blob store URL (default: the one the control plane uses; env CUSTOS_BLOBS)")
    ps.add_argument("--state-dir", help="where resume state is kept (default ~/.local/state/custos/push)")
    ps.set_defaults(fn=cmd_push)
    pl = sub.add_parser("pull", parents=[common], help="download, decrypt and verify an artifact into DEST")
    pl.add_argument("artifact", help="artifact id or a unique prefix")
    pl.add_argument("dest", help="a new directory for the decrypted, verified files")
    pl.add_argument("--blobs", help="blob store URL (default: the artifact's; env CUSTOS_BLOBS)")
    pl.set_defaults(fn=cmd_pull)
