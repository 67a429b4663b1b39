#!/usr/bin/env python3
"""Manifest hashing throughput against the limit measured in the same run.

The limit is hashlib SHA-256 on one in-memory buffer, times the number of
cores: no hasher that reads files can beat it. Files are read once first so the
page cache is warm. If the `model-signing` package is installed, its serialize
of the same directory is timed too.

    python bench/hash_bench.py [--files 16] [--size-mib 64] [--dir D]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from custos.fs.hashing import build_manifest


def hashlib_limit(n_bytes: int) -> float:
    buf = os.urandom(min(n_bytes, 256 << 20))
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        hashlib.sha256(buf).digest()
        best = max(best, len(buf) / (time.perf_counter() - t))
    return best


def best_of(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--dir")
    ns = ap.parse_args()
    cores = os.cpu_count() or 1
    tmp = Path(ns.dir) if ns.dir else Path(tempfile.mkdtemp(prefix="custos-hash-bench-"))
    try:
        chunk = os.urandom(1 << 20)
        for i in range(ns.files):
            with open(tmp / f"model-{i:05d}.safetensors", "wb") as f:
                for _ in range(ns.size_mib):
                    f.write(chunk)
        total = ns.files * ns.size_mib << 20
        build_manifest(tmp)  # warm the page cache
        one = hashlib_limit(total)
        limit = one * cores
        t = best_of(lambda: build_manifest(tmp))
        ours = total / t
        t1 = best_of(lambda: build_manifest(tmp, workers=1))
        print(f"data: {ns.files} files x {ns.size_mib} MiB = {total / 2**30:.2f} GiB, {cores} cores, warm cache")
        print(f"hashlib sha256, 1 core, in memory : {one / 1e9:6.2f} GB/s")
        print(f"limit = hashlib x {cores} cores        : {limit / 1e9:6.2f} GB/s")
        print(f"custos manifest, 1 worker         : {total / t1 / 1e9:6.2f} GB/s  ratio vs 1 core {total / t1 / one:.2f}")
        print(f"custos manifest, {cores} workers        : {ours / 1e9:6.2f} GB/s  ratio vs limit {ours / limit:.2f} (goal >= 0.9)")
        try:
            from model_signing import hashing as ms_hashing  # type: ignore[import-not-found]
        except ImportError as exc:
            print(f"model-signing: not importable ({exc}); pip install model-signing pyopenssl to compare")
            return
        # model-signing's default: SHA-256 per file, files in parallel (a process pool).
        tm = best_of(lambda: ms_hashing.Config().hash(tmp))
        print(f"model-signing 1.x Config().hash   : {total / tm / 1e9:6.2f} GB/s  custos is {tm / t:.2f}x as fast")
    finally:
        if not ns.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
