"""Throughput of the chunked AEAD format against raw AES-256-GCM, in the same run.

The physical limit here is ``AESGCM.encrypt_into`` / ``decrypt_into`` over the same
in-memory buffer: one call over the whole buffer for a single thread, and the same calls
on chunk-sized slices spread over a thread pool for all cores. The format's overhead is
what it adds on top: per-chunk nonce and associated data, length checks, Python calls.
Ratios are format / raw; the goal is >= 0.8.

    python bench/crypto_bench.py                       # 1 GiB, default chunk size
    python bench/crypto_bench.py --chunk-sizes 65536,1048576,4194304
    python bench/crypto_bench.py --size-mib 256 --repeat 5
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custos.core.chunked import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    FileCipher,
    chunk_bounds,
    chunk_offset,
    decrypt_stream,
    encrypt_stream,
)

ARTIFACT_ID = "5e" * 32
PATH = "model-00001-of-00001.safetensors"
STRIPE_BYTES = 16 << 20  # work unit per thread task, as a pusher's multipart part would be


class MemoryReader(io.RawIOBase):
    """A non-seekable reader over a buffer that copies only into the caller's buffer."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class MemoryWriter(io.RawIOBase):
    """A writer into a preallocated buffer (one memcpy per byte, no reallocation)."""

    def __init__(self, data: bytearray) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, buf: memoryview) -> int:  # type: ignore[override]
        n = len(buf)
        self._data[self._pos : self._pos + n] = buf
        self._pos += n
        return n


def best_of(repeat: int, *fns: Callable[[], object]) -> list[float]:
    """Fastest wall time of ``repeat`` runs of each function, in seconds. Runs alternate
    between the functions so that a noisy neighbour slows all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def stripes(count: int, per_stripe: int) -> list[range]:
    return [range(i, min(i + per_stripe, count)) for i in range(0, count, per_stripe)]


def run(size: int, chunk_size: int, threads: int, repeat: int) -> dict[str, float]:
    """Return GB/s for each measured operation."""
    key = bytearray(os.urandom(32))
    plaintext = bytearray(os.urandom(size))
    pview = memoryview(plaintext)

    # Raw AES-GCM, the limit. Nonces are fixed because nothing here is kept.
    raw = AESGCM(os.urandom(32))
    raw_nonce = bytes(12)
    raw_ct = bytearray(size + TAG_SIZE)
    raw_pt = bytearray(size)

    def raw_encrypt() -> None:
        raw.encrypt_into(raw_nonce, pview, None, raw_ct)

    def raw_decrypt() -> None:
        raw.decrypt_into(raw_nonce, raw_ct, None, raw_pt)

    raw_encrypt()  # decrypt needs a valid ciphertext

    # Raw per-chunk calls on a pool: the all-cores limit for this chunk size.
    count = -(-size // chunk_size)
    raw_chunked_ct = bytearray(size + TAG_SIZE * count)
    rcview = memoryview(raw_chunked_ct)
    raw_chunked_pt = bytearray(size)
    rpview = memoryview(raw_chunked_pt)

    def raw_enc_range(r: range) -> None:
        for i in r:
            p0, p1 = i * chunk_size, min((i + 1) * chunk_size, size)
            c0 = i * (chunk_size + TAG_SIZE)
            raw.encrypt_into(raw_nonce, pview[p0:p1], None, rcview[c0 : c0 + p1 - p0 + TAG_SIZE])

    def raw_dec_range(r: range) -> None:
        for i in r:
            p0, p1 = i * chunk_size, min((i + 1) * chunk_size, size)
            c0 = i * (chunk_size + TAG_SIZE)
            raw.decrypt_into(raw_nonce, rcview[c0 : c0 + p1 - p0 + TAG_SIZE], None, rpview[p0:p1])

    # The format: one FileCipher, chunks laid out exactly as in the stored object.
    fc = FileCipher.new(key, ARTIFACT_ID, PATH, size, chunk_size=chunk_size)
    header = fc.header
    ciphertext = bytearray(header.ciphertext_size)
    ciphertext[:HEADER_SIZE] = header.encode()
    cview = memoryview(ciphertext)
    decrypted = bytearray(size)
    dview = memoryview(decrypted)

    def fmt_enc_range(r: range) -> None:
        for i in r:
            p0, p1 = chunk_bounds(header, i)
            fc.encrypt_chunk_into(i, pview[p0:p1], cview[chunk_offset(header, i) :])

    def fmt_dec_range(r: range) -> None:
        for i in r:
            p0, _ = chunk_bounds(header, i)
            c0, c1 = chunk_offset(header, i), chunk_offset(header, i + 1)
            fc.decrypt_chunk_into(i, cview[c0:c1], dview[p0:])

    per_stripe = max(1, STRIPE_BYTES // chunk_size)
    work = stripes(count, per_stripe)
    pool = ThreadPoolExecutor(max_workers=threads)

    def on_pool(fn: Callable[[range], None]) -> Callable[[], object]:
        return lambda: list(pool.map(fn, work))

    # The streaming API copies each byte once in (readinto) and once out (write), as it would
    # from and to a file in the page cache. Preallocated buffers keep page faults out of it.
    stream_ct = bytearray(header.ciphertext_size + HEADER_SIZE)  # a fresh header may differ
    stream_pt = bytearray(size)

    def stream_encrypt() -> None:
        src, dst = cast(BinaryIO, MemoryReader(pview)), cast(BinaryIO, MemoryWriter(stream_ct))
        encrypt_stream(key, ARTIFACT_ID, PATH, src, dst, size, chunk_size)

    def stream_decrypt() -> None:
        src, dst = cast(BinaryIO, MemoryReader(cview)), cast(BinaryIO, MemoryWriter(stream_pt))
        decrypt_stream(key, ARTIFACT_ID, PATH, src, dst)

    results: dict[str, float] = {}
    gb = size / 1e9
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "encrypt 1 thread": (raw_encrypt, lambda: fmt_enc_range(range(count))),
        "decrypt 1 thread": (raw_decrypt, lambda: fmt_dec_range(range(count))),
        "encrypt pool": (on_pool(raw_enc_range), on_pool(fmt_enc_range)),
        "decrypt pool": (on_pool(raw_dec_range), on_pool(fmt_dec_range)),
    }
    for name, (raw_fn, fmt_fn) in pairs.items():
        raw_s, fmt_s = best_of(repeat, raw_fn, fmt_fn)
        results[f"raw {name}"] = gb / raw_s
        results[f"fmt {name}"] = gb / fmt_s
    enc_s, dec_s = best_of(repeat, stream_encrypt, stream_decrypt)
    results["fmt encrypt_stream"] = gb / enc_s
    results["fmt decrypt_stream"] = gb / dec_s
    pool.shutdown()
    if decrypted != plaintext:
        raise SystemExit("decryption did not invert encryption")
    fc.zeroize()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="buffer size (MiB)")
    parser.add_argument(
        "--chunk-sizes",
        default=str(DEFAULT_CHUNK_SIZE),
        help="comma-separated chunk sizes in bytes",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs")
    args = parser.parse_args()
    size = args.size_mib << 20

    print(f"buffer {args.size_mib} MiB, {args.threads} threads, best of {args.repeat}")
    for chunk_size in (int(c) for c in args.chunk_sizes.split(",")):
        r = run(size, chunk_size, args.threads, args.repeat)
        print(f"\nchunk size {chunk_size} bytes ({chunk_size / (1 << 20):g} MiB)")
        print(f"  {'operation':24} {'GB/s':>7}   ratio vs raw")
        for op in ("encrypt", "decrypt"):
            for mode in ("1 thread", "pool"):
                fmt, raw = r[f"fmt {op} {mode}"], r[f"raw {op} {mode}"]
                print(f"  {'raw ' + op + ' ' + mode:24} {raw:7.2f}")
                print(f"  {'format ' + op + ' ' + mode:24} {fmt:7.2f}   {fmt / raw:5.2f}")
        for op in ("encrypt", "decrypt"):
            fmt, raw = r[f"fmt {op}_stream"], r[f"raw {op} 1 thread"]
            label = f"format {op}_stream"
            print(f"  {label:24} {fmt:7.2f}   {fmt / raw:5.2f}  (+1 memcpy in, +1 out)")


if __name__ == "__main__":
    main()
