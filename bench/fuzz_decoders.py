"""Coverage-guided fuzzing of the decoders that take bytes from the wire or from storage.

Targets: canonical JSON, manifests, orders (decode and the full verify_order), signer sets
(decode, signature lists, verify_rotation), and the chunk format (header, stream reader,
range reader). Each is seeded from the known-answer vectors in tests/core/vectors/. A
decoder may raise only the CustosError subclasses its docstring names; any other exception,
or a decoded value that does not re-encode to the input, is a crash. verify_order and
verify_rotation never raise for bad data at all.

Two engines, one target table:

- ``builtin`` (always there): a mutation fuzzer guided by line-edge coverage of the core's
  own code (sys.settrace, only frames in custos/core), with a dictionary of hostile tokens.
- ``atheris`` (libFuzzer; used when the package is installed): one worker process per
  target, the loaded modules instrumented, the same harness and crash rules.

    python bench/fuzz_decoders.py                                  # 10^6 inputs in all, seed 0
    python bench/fuzz_decoders.py --inputs 200000 --seed 7 --targets manifest,canonical
    python bench/fuzz_decoders.py --engine atheris --crash-dir /tmp/crashes

Prints, per target, the inputs run, execs/s, corpus size and crashes, then every crash with
the input that caused it (hex). Exits 1 if there was a crash.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType, FunctionType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custos.core import chunked
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.manifest import FileEntry, Manifest, ManifestError, decode_manifest
from custos.core.orders import ExecutedOrders, Order, OrderError, verify_order
from custos.core.signers import SignerSet, SignerSetError, decode_signatures, encode_signatures, verify_rotation
from custos.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "core" / "vectors"
CORE = str(ROOT / "custos" / "core")
MAX_LEN = 1 << 16
SEP = b"\x00"  # between a body and its signature list: canonical JSON never holds a raw NUL


class PropertyViolated(Exception):
    """A decoder accepted bytes that do not re-encode to themselves (two encodings, one value)."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[Exception], ...]  # what the decoder documents; anything else is a crash
    seeds: tuple[bytes, ...]


@dataclass
class Crash:
    target: str
    data: bytes
    error: str
    where: str


@dataclass
class Result:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    corpus: int = 0
    edges: int = 0
    crashes: list[Crash] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.inputs / max(self.seconds, 1e-9)


# -- the targets ---------------------------------------------------------------------


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def _split(data: bytes) -> tuple[bytes, bytes]:
    body, _, sigs = data.partition(SEP)
    return body, sigs


def targets() -> dict[str, Target]:
    """Every target, seeded from the vectors."""
    ov, sv, cv = _load("orders.json"), _load("signer-sets.json"), _load("chunk-format-v1.json")
    set1 = SignerSet.decode(sv["sets"][0]["bytes"].encode())
    mixed = SignerSet.decode(sv["mixed_set"]["bytes"].encode())
    now = int(ov["now"])
    orders = [(o["bytes"].encode(), encode_signatures(decode_signatures(o["signatures"]))) for o in ov["orders"]]
    rotations = [(s["bytes"].encode(), encode_signatures(decode_signatures(s["signatures"]))) for s in sv["sets"][1:]]
    manifest = Manifest.from_entries([
        FileEntry("config.json", 2, "ab" * 32), FileEntry("model-00001.safetensors", 10**12, "0" * 64),
        FileEntry("sub/dir/é.bin", 0, "f" * 64)]).encode()
    chunk = cv["vectors"]
    first = chunk[0]
    key, aid, path = bytes.fromhex(first["data_key"]), first["artifact_id"], first["path"]
    streams = tuple(bytes.fromhex(v["ciphertext"]) for v in chunk if (v["data_key"], v["artifact_id"], v["path"])
                    == (first["data_key"], aid, path))
    canonical = (manifest, *(b for b, _ in orders), *(b for b, _ in rotations), sv["mixed_set"]["bytes"].encode())

    def canonical_roundtrip(data: bytes) -> None:
        if encode_canonical(decode_canonical(data)) != data:
            raise PropertyViolated("decode_canonical accepted bytes that re-encode differently")

    def manifest_roundtrip(data: bytes) -> None:
        if decode_manifest(data).encode() != data:
            raise PropertyViolated("decode_manifest accepted bytes that re-encode differently")

    def order_roundtrip(data: bytes) -> None:
        if Order.decode(data).encode() != data:
            raise PropertyViolated("Order.decode accepted bytes that re-encode differently")

    def signer_set_roundtrip(data: bytes) -> None:
        if SignerSet.decode(data).encode() != data:
            raise PropertyViolated("SignerSet.decode accepted bytes that re-encode differently")

    def signatures_roundtrip(data: bytes) -> None:
        encode_signatures(decode_signatures(data))  # what decodes must encode again (export files)

    def verify_orders(data: bytes) -> None:
        body, sigs = _split(data)
        signatures = decode_signatures(sigs)  # may raise SignerSetError; verify_order may not raise
        for trusted in (set1, mixed):
            verify_order(body, signatures, trusted, now=now, state=ExecutedOrders())

    def rotation(data: bytes) -> None:
        body, sigs = _split(data)
        verify_rotation(set1, body, decode_signatures(sigs))

    def chunk_stream(data: bytes) -> None:
        chunked.decrypt_stream(key, aid, path, io.BytesIO(data), io.BytesIO())

    def chunk_range(data: bytes) -> None:
        chunked.decrypt_range(key, aid, path, lambda at, n: data[at:at + n], 0, 1, object_size=len(data))

    table = [
        Target("canonical", canonical_roundtrip, (InvalidInput,), canonical),
        Target("manifest", manifest_roundtrip, (ManifestError,), (manifest,)),
        Target("order", order_roundtrip, (OrderError,), tuple(b for b, _ in orders)),
        Target("verify_order", verify_orders, (SignerSetError,), tuple(b + SEP + s for b, s in orders)),
        Target("signer_set", signer_set_roundtrip, (SignerSetError,),
               (*(b for b, _ in rotations), sv["sets"][0]["bytes"].encode(), sv["mixed_set"]["bytes"].encode())),
        Target("signatures", signatures_roundtrip, (SignerSetError,), tuple(s for _, s in orders + rotations)),
        Target("rotation", rotation, (SignerSetError,), tuple(b + SEP + s for b, s in rotations)),
        Target("chunk_header", chunked.FileHeader.decode, (chunked.MalformedHeader,),
               tuple(s[:chunked.HEADER_SIZE] for s in streams)),
        Target("chunk_stream", chunk_stream, (chunked.TamperedCiphertext,), streams),
        # InvalidInput: a (mutated) header whose file is shorter than the range asked for.
        Target("chunk_range", chunk_range, (chunked.TamperedCiphertext, InvalidInput), streams),
    ]
    return {t.name: t for t in table}


def run_one(target: Target, data: bytes) -> Crash | None:
    """Run one input; the crash it caused, if any."""
    try:
        target.run(data)
    except target.allowed:
        return None
    except Exception as exc:  # noqa: BLE001 - the point: anything undocumented is a finding
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return Crash(target.name, data, f"{type(exc).__name__}: {str(exc)[:200]}",
                     f"{Path(frame.filename).name}:{frame.lineno}")
    return None


# -- the builtin engine ----------------------------------------------------------------

TOKENS = (
    b'"\\ud800"', b'"\\udc00"', b'\\ud83d', b'\\u0000', b'\\u202e', b'\\"', b"\\\\", b"true", b"false", b"null",
    b"[]", b"{}", b"[" * 40, b'{"a":' * 40, b"[" * 3000, b"0", b"-1", b"-0", b"01", b"1.5", b"1e3", b"NaN",
    b"9223372036854775807", b"9223372036854775808", b"18446744073709551616", b"1" * 5000, b"\xef\xbb\xbf",
    b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b" ", b"\n", b"..", b"/", b"e\xcc\x81", b"\xe2\x80\xae", b'"",',
    b"-----BEGIN SSH SIGNATURE-----\n", chunked.MAGIC, b"\x00\x01", b"\xff\xff\xff\xff",
)
INTERESTING_INTS = (0, 1, 15, 16, 17, 0x7F, 0x80, 0xFF, 0xFFFF, 1 << 26, (1 << 26) + 1, 1 << 40, (1 << 40) + 1,
                    (1 << 63) - 1, (1 << 64) - 1)


class Mutator:
    def __init__(self, rng: random.Random, dictionary: list[bytes]) -> None:
        self.rng = rng
        self.dictionary = dictionary

    def mutate(self, data: bytes, other: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 3, 4))):
            self._one(out, other)
        return bytes(out[:MAX_LEN])

    def _one(self, out: bytearray, other: bytes) -> None:
        rng = self.rng
        n = len(out)
        pos = rng.randrange(n + 1)
        op = rng.randrange(10)
        if op == 0 and n:
            out[pos % n] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            out[pos % n] = rng.choice(b'\x00\xff\x7f\x80"\\[]{},:0-e ')
        elif op == 2:
            out[pos:pos] = rng.choice(self.dictionary)
        elif op == 3 and n:
            end = min(n, pos + rng.randrange(1, 9))
            out[pos:end] = rng.choice(self.dictionary)
        elif op == 4 and n:
            del out[pos:pos + rng.randrange(1, 1 + max(1, n // 8))]
        elif op == 5 and n:
            start = rng.randrange(n)
            chunk = out[start:start + rng.randrange(1, 65)]
            out[pos:pos] = chunk
        elif op == 6 and other:
            cut = rng.randrange(len(other) + 1)
            out[pos:] = other[cut:]
        elif op == 7:
            del out[pos:]
        elif op == 8 and n >= 8:
            width = rng.choice((2, 4, 8))
            at = rng.randrange(n - width + 1)
            out[at:at + width] = (rng.choice(INTERESTING_INTS) % (1 << (8 * width))).to_bytes(width, "big")
        else:
            out[pos:pos] = rng.randbytes(rng.randrange(1, 5))


def _strings(seeds: tuple[bytes, ...]) -> list[bytes]:
    """Quoted strings of the seeds (field names, enum values) for the dictionary."""
    found: set[bytes] = set()
    for seed in seeds:
        for part in seed.split(b'"')[1::2]:
            if 0 < len(part) <= 32:
                found.add(b'"' + part + b'"')
    return sorted(found)


class Coverage:
    """Line edges (code, previous line, line) seen in the core's own frames."""

    def __init__(self, prefix: str = CORE) -> None:
        self.prefix = prefix
        self.edges: set[tuple[CodeType, int, int]] = set()
        self._ours: dict[str, bool] = {}

    def _global(self, frame: FrameType, event: str, arg: object) -> Any:
        code = frame.f_code
        ours = self._ours.get(code.co_filename)
        if ours is None:
            ours = self._ours[code.co_filename] = code.co_filename.startswith(self.prefix)
        if not ours:
            return None
        edges, prev = self.edges, [code.co_firstlineno]

        def local(frame: FrameType, event: str, arg: object) -> Any:
            if event == "line":
                line = frame.f_lineno
                edges.add((code, prev[0], line))
                prev[0] = line
            return local

        return local

    def run(self, fn: Callable[[], Crash | None]) -> tuple[Crash | None, bool]:
        """Run ``fn`` traced: its crash, and whether it reached an edge not seen before."""
        before = len(self.edges)
        sys.settrace(self._global)
        try:
            crash = fn()
        finally:
            sys.settrace(None)
        return crash, len(self.edges) > before


def fuzz(target: Target, inputs: int, seed: int) -> Result:
    """Run ``inputs`` inputs against ``target`` with the builtin engine, seeded by ``seed``."""
    rng = random.Random(f"{seed}/{target.name}")
    mutator = Mutator(rng, [*TOKENS, *_strings(target.seeds)])
    cov = Coverage()
    corpus = list(target.seeds)
    result = Result(target.name)
    seen_crashes: set[tuple[str, str]] = set()
    t0 = time.perf_counter()
    for i in range(inputs):
        if i < len(target.seeds):
            data = target.seeds[i]
        else:
            data = mutator.mutate(rng.choice(corpus), rng.choice(corpus))
        crash, new = cov.run(functools.partial(run_one, target, data))
        if new and len(corpus) < 4096:
            corpus.append(data)
        if crash is not None and (crash.error.split(":")[0], crash.where) not in seen_crashes:
            seen_crashes.add((crash.error.split(":")[0], crash.where))
            result.crashes.append(crash)
    result.seconds = time.perf_counter() - t0
    result.inputs, result.corpus, result.edges = inputs, len(corpus), len(cov.edges)
    return result


# -- the atheris engine ------------------------------------------------------------------


def _atheris_worker(name: str, inputs: int, seed: int, out: Path) -> None:
    """Fuzz one target under libFuzzer; write a Result as JSON to ``out`` after ``inputs`` runs."""
    import atheris  # optional: the atheris engine only (pip install atheris)

    target = targets()[name]
    # The core's own functions only: instrumenting every loaded module costs ~20 s a worker.
    for obj in gc.get_objects():
        if isinstance(obj, FunctionType) and obj.__code__.co_filename.startswith(CORE):
            atheris.instrument_func(obj)
    corpus_dir = Path(tempfile.mkdtemp(prefix=f"custos-fuzz-{name}-"))
    for i, s in enumerate(target.seeds):
        (corpus_dir / f"seed-{i}").write_bytes(s)
    # libFuzzer's dictionary: the same hostile tokens (it keeps entries up to 64 bytes).
    words = [w[:64] for w in (*TOKENS, *_strings(target.seeds))]
    dictionary = corpus_dir.with_suffix(".dict")
    dictionary.write_text("".join('"' + "".join(f"\\x{b:02x}" for b in w) + '"\n' for w in words))
    result = Result(name)
    seen: set[tuple[str, str]] = set()
    t0 = time.perf_counter()

    def one(data: bytes) -> None:
        crash = run_one(target, data)
        if crash is not None and (crash.error.split(":")[0], crash.where) not in seen:
            seen.add((crash.error.split(":")[0], crash.where))
            result.crashes.append(crash)
        result.inputs += 1
        if result.inputs >= inputs:
            result.seconds = time.perf_counter() - t0
            out.write_text(json.dumps(_result_json(result)))
            os._exit(0)

    atheris.Setup([sys.argv[0], f"-seed={seed}", f"-max_len={MAX_LEN}", "-rss_limit_mb=4096", f"-dict={dictionary}",
                   "-use_value_profile=1", f"-runs={inputs + 1000}", str(corpus_dir)], one)
    atheris.Fuzz()


def _result_json(r: Result) -> dict[str, Any]:
    return {"target": r.target, "inputs": r.inputs, "seconds": r.seconds, "corpus": r.corpus, "edges": r.edges,
            "crashes": [{"target": c.target, "data": c.data.hex(), "error": c.error, "where": c.where}
                        for c in r.crashes]}


def _fuzz_atheris(name: str, inputs: int, seed: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "libfuzzer.log"
        with open(log, "wb") as f:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--inputs", str(inputs),
                                   "--seed", str(seed), "--worker-out", str(out)], stdout=f, stderr=f, check=False)
        if not out.exists():
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"atheris worker for {name} exited {proc.returncode} without a result:\n{tail}")
        raw = json.loads(out.read_text())
        # libFuzzer's own count of the corpus and of the coverage it reached.
        stats = re.findall(r"cov: (\d+) ft: \d+ corp: (\d+)", log.read_text(errors="replace"))
    edges, corpus = (int(stats[-1][0]), int(stats[-1][1])) if stats else (0, 0)
    return Result(raw["target"], raw["inputs"], raw["seconds"], corpus, edges,
                  [Crash(c["target"], bytes.fromhex(c["data"]), c["error"], c["where"]) for c in raw["crashes"]])


def _have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


# -- the command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=1_000_000, help="inputs in all, split over the targets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default="", help="comma-separated (default: all)")
    p.add_argument("--engine", choices=["auto", "builtin", "atheris"], default="auto")
    p.add_argument("--crash-dir", type=Path, help="write each crashing input here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.worker:
        _atheris_worker(ns.worker, ns.inputs, ns.seed, ns.worker_out)
        return 0
    table = targets()
    names = [n for n in ns.targets.split(",") if n] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown targets {unknown}; known: {', '.join(table)}")
    engine = ns.engine if ns.engine != "auto" else ("atheris" if _have_atheris() else "builtin")
    per = max(1, ns.inputs // len(names))
    print(f"engine {engine}, seed {ns.seed}, {per * len(names)} inputs over {len(names)} targets")
    print(f"{'target':<14}{'inputs':>10}{'seconds':>10}{'execs/s':>10}{'corpus':>8}{'edges':>8}{'crashes':>9}")
    results = []
    for name in names:
        r = _fuzz_atheris(name, per, ns.seed) if engine == "atheris" else fuzz(table[name], per, ns.seed)
        results.append(r)
        print(f"{r.target:<14}{r.inputs:>10}{r.seconds:>10.1f}{r.rate:>10.0f}{r.corpus:>8}{r.edges:>8}"
              f"{len(r.crashes):>9}", flush=True)
    total = sum(r.inputs for r in results)
    secs = sum(r.seconds for r in results)
    crashes = [c for r in results for c in r.crashes]
    print(f"{'all':<14}{total:>10}{secs:>10.1f}{total / max(secs, 1e-9):>10.0f}{'':>16}{len(crashes):>9}")
    for i, c in enumerate(crashes):
        print(f"\ncrash {i} in {c.target}: {c.error} (at {c.where})\n  input ({len(c.data)} bytes): {c.data[:300].hex()}")
        if ns.crash_dir is not None:
            ns.crash_dir.mkdir(parents=True, exist_ok=True)
            (ns.crash_dir / f"{c.target}-{i}.bin").write_bytes(c.data)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
