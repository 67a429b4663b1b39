"""Blob store throughput against a real SeaweedFS: S3BlobStore vs plain boto3.

Starts ``weed mini`` on loopback (the test launcher), then moves the same random
bytes four ways and prints MiB/s and the ratio ours / boto3:

* upload:   S3BlobStore multipart, parts in parallel threads (Content-MD5 on
            every part, ListParts check before completion, HeadObject after)
            vs ``client.upload_fileobj`` with the default TransferConfig
            (8 MiB parts, 10 threads, CRC32 checksums).
* download: S3BlobStore.iter_object (parallel If-Match ranged GETs, lengths checked)
            vs ``client.download_fileobj`` with the default TransferConfig.

Client and server share the machine, so the numbers are a comparison of the two
clients under the same conditions, not a measure of a network. Run::

    python bench/blob_bench.py [--size-mib 1024] [--part-mib 16] [--threads 8]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import botocore.config

from custos.blobs.s3 import S3BlobStore
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs

MiB = 1024 * 1024


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def upload_ours(store: S3BlobStore, key: str, data: bytes, part: int, threads: int) -> None:
    uid = store.start_upload(key)
    view = memoryview(data)
    offsets = range(0, len(data), part)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [
            pool.submit(store.upload_part, key, uid, i, view[off : off + part])
            for i, off in enumerate(offsets, start=1)
        ]
        parts = [f.result() for f in futures]
    store.complete_upload(key, uid, parts)


def download_ours(store: S3BlobStore, key: str, part: int) -> bytearray:
    out = bytearray()
    for piece in store.iter_object(key, part_size=part):
        out += piece
    return out


class _Sink(io.RawIOBase):
    """A writable that keeps what download_fileobj writes (seekable, as it may require)."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset
        return self.pos

    def write(self, b: Any) -> int:
        n = len(b)
        self.buf[self.pos : self.pos + n] = b
        self.pos += n
        return n


def download_raw(client: Any, bucket: str, key: str, size: int) -> bytearray:
    sink = _Sink(size)
    client.download_fileobj(bucket, key, sink)
    return sink.buf


def raw_client(server: SeaweedFS) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.custos.access_key,
        aws_secret_access_key=server.custos.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-mib", type=int, default=16, help="our upload part size")
    parser.add_argument("--threads", type=int, default=8, help="our parallel part uploads")
    parser.add_argument("--download-part-mib", type=int, default=8)
    parser.add_argument("--download-concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order alternating")
    args = parser.parse_args()

    size = args.size_mib * MiB
    print(f"generating {args.size_mib} MiB of random bytes ...", flush=True)
    data = os.urandom(size)

    server = start_seaweedfs(bucket="custos-bench")
    print(f"weed mini ready in {server.startup_seconds:.2f} s at {server.endpoint_url}")
    try:
        store = S3BlobStore(
            endpoint_url=server.endpoint_url,
            bucket=server.bucket,
            access_key=server.custos.access_key,
            secret_key=server.custos.secret_key,
            max_pool_connections=max(args.threads, args.download_concurrency) + 2,
            download_concurrency=args.download_concurrency,
        )
        client = raw_client(server)
        rates: dict[str, list[float]] = {}
        upload_part_size = args.part_mib * MiB
        download_part_size = args.download_part_mib * MiB

        for rnd in range(args.rounds):
            print(f"round {rnd + 1}", flush=True)
            ours_key, raw_key = f"bench/ours-{rnd}", f"bench/raw-{rnd}"
            # Alternate who goes first, so neither always meets a cold (or warm) server.
            first_ours = rnd % 2 == 0
            uploads: list[tuple[str, Callable[[], object]]] = [
                (
                    "upload ours",
                    partial(upload_ours, store, ours_key, data, upload_part_size, args.threads),
                ),
                (
                    "upload boto3",
                    partial(client.upload_fileobj, io.BytesIO(data), server.bucket, raw_key),
                ),
            ]
            downloads: list[tuple[str, Callable[[], object]]] = [
                ("download ours", partial(download_ours, store, ours_key, download_part_size)),
                ("download boto3", partial(download_raw, client, server.bucket, raw_key, size)),
            ]
            for steps in (uploads, downloads):
                for name, fn in steps if first_ours else steps[::-1]:
                    seconds, result = _timed(fn)
                    mibs = size / MiB / seconds
                    print(f"  {name:<16} {seconds:7.2f} s  {mibs:8.1f} MiB/s", flush=True)
                    rates.setdefault(name, []).append(mibs)
                    if result is not None and result != data:
                        print(f"MISMATCH: {name} returned other bytes than were uploaded")
                        return 1
                    del result
            store.delete(ours_key)
            store.delete(raw_key)

        print(
            f"\n{args.size_mib} MiB, {args.rounds} rounds; ours: {args.part_mib} MiB parts x "
            f"{args.threads} threads up, {args.download_part_mib} MiB ranges x "
            f"{args.download_concurrency} down; boto3: TransferConfig defaults"
        )
        for op in ("upload", "download"):
            ours, raw = rates[f"{op} ours"], rates[f"{op} boto3"]
            for label, pick in (("median", statistics.median), ("best", max)):
                print(
                    f"  {op:<9} {label:<6} ours {pick(ours):7.1f} MiB/s   "
                    f"boto3 {pick(raw):7.1f} MiB/s   ratio {pick(ours) / pick(raw):.2f}"
                )
        store.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
