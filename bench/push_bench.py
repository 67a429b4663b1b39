#!/usr/bin/env python3
"""Encrypted push and verified pull against the limits measured in the same run,
on one real SeaweedFS (started here on loopback):

- push (encrypt locally + multipart upload) vs a raw boto3 upload_file of the same
  plaintext bytes (goal >= 0.9); the manifest hashing that precedes a push is
  timed separately;
- pull (download + decrypt + SHA-256 verify + write) vs a raw boto3 download_file
  (goal >= 0.9);
- encrypt-only (the chunked format, one core) vs cryptography's AES-GCM
  encrypt_into on the same buffer (goal >= 0.8);
- peak RSS of a push+pull of 1 GiB and 4 GiB artifacts, each in its own
  process (goal <= 256 MiB, flat).

    python bench/push_bench.py [--size-gib 1] [--rss-sizes 1,4] [--skip-rss]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1 << 20


def make_artifact(root: Path, size: int, files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 * MiB)
    per = size // files
    for i in range(files):
        with open(root / f"model-{i + 1:05d}-of-{files:05d}.safetensors", "wb") as f:
            left = per
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n


def s3_store(server):  # type: ignore[no-untyped-def]
    from custos.blobs.s3 import S3BlobStore

    return S3BlobStore(endpoint_url=server.endpoint_url, bucket=server.bucket,
                       access_key=server.custos.access_key, secret_key=server.custos.secret_key,
                       prefix="bench/")


def push_pull(server_json: str, src: Path, dest: Path) -> dict[str, float]:
    """Push then pull ``src`` with the library, as the CLI does; returns timings."""
    from custos.client.transfer import Pusher, PushState, pull_into
    from custos.fs.hashing import build_manifest
    from tests.servers.seaweedfs import S3Identity, SeaweedFS  # noqa: F401

    info = json.loads(server_json)

    class _S:
        endpoint_url = info["endpoint_url"]
        bucket = info["bucket"]
        custos = S3Identity("custos", info["access_key"], info["secret_key"])

    blobs = s3_store(_S)
    t = time.perf_counter()
    manifest = build_manifest(src)
    t_hash = time.perf_counter() - t
    key = bytearray(os.urandom(32))
    t = time.perf_counter()
    Pusher(blobs=blobs, data_key=key, artifact_id=manifest.artifact_id, manifest=manifest, root=src,
           state=PushState(dest.parent / "state.json"), resumed=False).run()
    t_push = time.perf_counter() - t
    from custos.blobs.url import object_key

    objects = {f.path: object_key(manifest.artifact_id, i) for i, f in enumerate(manifest.files)}
    t = time.perf_counter()
    pull_into(blobs, data_key=key, artifact_id=manifest.artifact_id, manifest=manifest, objects=objects, dest=dest)
    t_pull = time.perf_counter() - t
    for i in range(len(manifest.files)):
        blobs.delete(object_key(manifest.artifact_id, i))
    return {"hash": t_hash, "push": t_push, "pull": t_pull}


def raw_boto3(server, src: Path, dest: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    s3 = server.client()
    files = sorted(src.iterdir())
    t = time.perf_counter()
    for f in files:
        s3.upload_file(str(f), server.bucket, f"raw/{f.name}")
    t_up = time.perf_counter() - t
    dest.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for f in files:
        s3.download_file(server.bucket, f"raw/{f.name}", str(dest / f.name))
    t_down = time.perf_counter() - t
    for f in files:
        s3.delete_object(Bucket=server.bucket, Key=f"raw/{f.name}")
    return {"up": t_up, "down": t_down}


def encrypt_only(size: int = 256 * MiB) -> tuple[float, float]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from custos.core import chunked

    buf = memoryview(os.urandom(size))
    cs = chunked.DEFAULT_CHUNK_SIZE
    out = bytearray(cs + 16)
    key = os.urandom(32)
    cipher = chunked.FileCipher.new(key, "0" * 64, "bench.safetensors", size)
    aead = AESGCM(key)
    nonce = bytes(12)
    best_fmt = best_raw = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for i in range(cipher.header.chunk_count):
            a, b = chunked.chunk_bounds(cipher.header, i)
            cipher.encrypt_chunk_into(i, buf[a:b], out)
        best_fmt = max(best_fmt, size / (time.perf_counter() - t))
        t = time.perf_counter()
        for a in range(0, size, cs):
            aead.encrypt_into(nonce, buf[a:a + cs], b"", out)
        best_raw = max(best_raw, size / (time.perf_counter() - t))
    return best_fmt, best_raw


def rss_child(server_json: str, gib: int, workdir: Path) -> int:
    """Run a push+pull of a gib-GiB artifact in a fresh process; return its peak RSS in bytes."""
    src = workdir / f"rss-{gib}"
    make_artifact(src, gib << 30, files=max(1, gib))
    code = (
        "import json,resource,sys;from pathlib import Path;"
        f"sys.path.insert(0,{str(ROOT)!r});"
        "from bench.push_bench import push_pull;"
        f"push_pull({server_json!r}, Path({str(src)!r}), Path({str(workdir / f'rss-out-{gib}')!r}));"
        # VmHWM, not ru_maxrss: Linux carries the parent's peak RSS across fork+exec into
        # ru_maxrss, so a child of this (large) process would report the parent's peak.
        "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(workdir / f"rss-out-{gib}", ignore_errors=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rss-sizes", default="1,4")
    ap.add_argument("--skip-rss", action="store_true")
    ns = ap.parse_args()
    from tests.servers.seaweedfs import start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix="custos-push-bench-"))
    server = start_seaweedfs(bucket="bench", base_dir=work / "weed")
    try:
        size = int(ns.size_gib * (1 << 30))
        src = work / "src"
        make_artifact(src, size, ns.files)
        sj = json.dumps({"endpoint_url": server.endpoint_url, "bucket": server.bucket,
                         "access_key": server.custos.access_key, "secret_key": server.custos.secret_key})
        raw = raw_boto3(server, src, work / "raw-down")
        shutil.rmtree(work / "raw-down")
        ours = push_pull(sj, src, work / "pulled")
        shutil.rmtree(work / "pulled")
        raw2 = raw_boto3(server, src, work / "raw-down")  # again: the limit can drift during a run
        shutil.rmtree(work / "raw-down")
        up, down = min(raw["up"], raw2["up"]), min(raw["down"], raw2["down"])
        gb = size / 1e9
        print(f"artifact: {size / 2**30:.2f} GiB in {ns.files} files, SeaweedFS on loopback, {os.cpu_count()} cores")
        print(f"raw boto3 upload_file           : {gb / up:6.2f} GB/s")
        print(f"custos push (encrypt + upload)  : {gb / ours['push']:6.2f} GB/s  ratio {up / ours['push']:.2f} (goal >= 0.9)")
        print(f"  manifest hashing before push  : {gb / ours['hash']:6.2f} GB/s  "
              f"(push incl. hashing: ratio {up / (ours['push'] + ours['hash']):.2f})")
        print(f"raw boto3 download_file         : {gb / down:6.2f} GB/s")
        print(f"custos pull (decrypt + verify)  : {gb / ours['pull']:6.2f} GB/s  ratio {down / ours['pull']:.2f} (goal >= 0.9)")
        fmt, rawc = encrypt_only()
        print(f"AES-256-GCM encrypt_into, 1 core: {rawc / 1e9:6.2f} GB/s")
        print(f"chunked format encrypt, 1 core  : {fmt / 1e9:6.2f} GB/s  ratio {fmt / rawc:.2f} (goal >= 0.8)")
        if not ns.skip_rss:
            for gib in [int(x) for x in ns.rss_sizes.split(",") if x]:
                rss = rss_child(sj, gib, work)
                print(f"peak RSS, push+pull of {gib} GiB  : {rss / MiB:6.0f} MiB (goal <= 256 MiB, flat)")
        print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB peak)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
