"""`custos dev ...`: helpers for trying Custos out. `custos dev make-weights DIR` writes a
small, valid, sharded safetensors checkpoint (random weights from a seed) to push."""

from __future__ import annotations

import argparse

from custos.cli.demo import generate_model
from custos.cli.output import Out, size
from custos.errors import InvalidInput


def cmd_make_weights(ns: argparse.Namespace, out: Out) -> int:
    from pathlib import Path

    root = Path(ns.dir)
    if root.exists() and any(root.iterdir()):
        raise InvalidInput(f"{root} exists and is not empty: pick a new directory")
    for flag, lo, hi in (("layers", 1, 64), ("width", 8, 4096), ("shards", 1, 64)):
        if not lo <= getattr(ns, flag) <= hi:
            raise InvalidInput(f"--{flag} must be from {lo} to {hi}")
    if ns.shards > ns.layers:
        raise InvalidInput("--shards cannot exceed --layers")
    generate_model(root, seed=ns.seed, layers=ns.layers, width=ns.width, shards=ns.shards)
    files = sorted(p for p in root.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    out.emit({"dir": str(root), "files": [p.name for p in files], "bytes": total, "seed": ns.seed},
             f"wrote {len(files)} files ({size(total)}) to {root}: "
             + ", ".join(p.name for p in files))
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("dev", help="helpers for trying Custos out (no server needed)")
    dsub = d.add_subparsers(dest="dev_cmd", required=True, metavar="SUBCOMMAND")
    mw = dsub.add_parser("make-weights", parents=[common],
                         help="write a small valid safetensors checkpoint (random weights) to DIR")
    mw.add_argument("dir", help="a new or empty directory")
    mw.add_argument("--seed", type=int, default=1, help="the weights' random seed: the same seed, the same bytes")
    mw.add_argument("--layers", type=int, default=4, help="transformer layers (default 4)")
    mw.add_argument("--width", type=int, default=256, help="hidden size (default 256)")
    mw.add_argument("--shards", type=int, default=2, help="safetensors shards (default 2)")
    mw.set_defaults(fn=cmd_make_weights)
