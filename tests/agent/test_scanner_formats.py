"""Weight formats by their first bytes: each format the scanner sniffs, lookalikes it must not take, fuzzing.

The headers are written here from each format's specification (safetensors,
GGUF, the NumPy .npy format, the HDF5 superblock, ONNX's ModelProto field
numbers, torch.save's zip layout), and pickles by the real ``pickle`` module.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.agent.scanner import CUSTOS_MAGIC
from custos.agent.scanner.formats import HEAD_BYTES, sniff


def safetensors(n_bytes: int = 4096) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_bytes // 4], "data_offsets": [0, n_bytes]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + os.urandom(n_bytes)


def gguf() -> bytes:
    # magic, version 3, tensor count, metadata kv count
    return b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + os.urandom(512)


def npy() -> bytes:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (64,), }"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + os.urandom(256)


def zipped(entries: list[tuple[str, bytes]], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def torch_zip(prefix: str = "archive", first: str = "data.pkl") -> bytes:
    # torch.save: ARCHIVE/data.pkl, then byteorder, the tensors under data/, .data/version
    rest = [("byteorder", b"little"), ("data/0", os.urandom(1024)), (".data/version", b"3\n")]
    return zipped([(f"{prefix}/{first}", pickle.dumps({"w": 1}, protocol=2)),
                   *((f"{prefix}/{n}", d) for n, d in rest if n != first)])


def hdf5(offset: int = 0) -> bytes:
    return b"\0" * offset + b"\x89HDF\r\n\x1a\n" + b"\0" + os.urandom(600)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def onnx(ir_version: int = 8) -> bytes:
    # ModelProto: ir_version (1, varint), producer_name (2), producer_version (3), graph (7), opset_import (8)
    graph = b"\x0a\x04node" + os.urandom(300)  # GraphProto bytes: opaque here
    return (b"\x08" + varint(ir_version) + b"\x12\x07pytorch" + b"\x1a\x052.1.0"
            + b"\x3a" + varint(len(graph)) + graph + b"\x42\x04\x0a\x00\x10\x11")


def pytorch_legacy() -> bytes:
    # The pre-1.6 torch.save format: a pickled magic number first (protocol 2).
    return pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + os.urandom(256)


FORMATS = [
    ("safetensors", safetensors(), "safetensors"),
    ("gguf", gguf(), "gguf"),
    ("ggml (legacy)", b"lmgg" + os.urandom(256), "gguf"),
    ("ggjt (legacy)", b"tjgg" + os.urandom(256), "gguf"),
    ("numpy .npy", npy(), "numpy"),
    ("numpy .npz", zipped([("w.npy", npy()), ("b.npy", npy())]), "numpy-zip"),
    ("torch.save zip", torch_zip(), "pytorch-zip"),
    ("torch.save zip, stem prefix", torch_zip("my_model"), "pytorch-zip"),
    ("torch.save zip, .format_version first", torch_zip(first=".format_version"), "pytorch-zip"),
    ("torch zip, byteorder first", torch_zip(first="byteorder"), "pytorch-zip"),
    ("torch legacy pickle", pytorch_legacy(), "pickle"),
    ("pickle protocol 4", pickle.dumps({"layer": [1.0] * 100}, protocol=4), "pickle"),
    ("pickle protocol 5", pickle.dumps(list(range(100)), protocol=5), "pickle"),
    ("hdf5", hdf5(), "hdf5"),
    ("hdf5 with a 512-byte user block", hdf5(512), "hdf5"),
    ("onnx", onnx(), "onnx"),
    ("onnx ir_version 10", onnx(10), "onnx"),
    ("custos ciphertext", CUSTOS_MAGIC + os.urandom(256), "custos-ciphertext"),
]


@pytest.mark.parametrize(("data", "want"), [(d, w) for _, d, w in FORMATS], ids=[n for n, _, _ in FORMATS])
def test_weight_formats_are_recognised(data: bytes, want: str) -> None:
    assert sniff(data[:HEAD_BYTES], len(data), ciphertext_magic=CUSTOS_MAGIC) == want


LOOKALIKES = [
    ("empty", b""),
    ("text", b"meeting notes: nothing to see here\n" * 20),
    ("json", json.dumps({"a": list(range(50))}).encode()),
    ("a shell script", b"#!/bin/sh\necho hi\n"),
    ("random bytes", b"\x17" + os.urandom(4095)),
    ("a plain zip (an office document)", zipped([("[Content_Types].xml", b"<xml/>"), ("word/document.xml", b"x")])),
    ("a zip of text", zipped([("readme.txt", b"hello" * 100)], compress=True)),
    ("safetensors length past the file", struct.pack("<Q", 10_000) + b'{"w": 1}' + b" " * 100),
    ("safetensors length 0", struct.pack("<Q", 0) + b"{}" + b"\0" * 100),
    ("a length, then no brace", struct.pack("<Q", 16) + b"[" + b"\0" * 100),
    ("pickle protocol 1", b"\x80\x01" + os.urandom(100)),
    ("protobuf that is no ModelProto (field 9 first)", b"\x48\x08" + os.urandom(100)),
    ("ONNX-like, fields out of order", b"\x08\x08\x1a\x01x\x12\x01y\x3a\x02ab"),
    ("ONNX-like, producer not UTF-8", b"\x08\x08\x12\x03\xff\xfe\xfd\x3a\x02ab"),
    ("ONNX-like, graph longer than the file", b"\x08\x08\x3a\xff\x7f" + b"\0" * 20),
    ("HDF5 signature at an odd offset", b"\0" * 100 + b"\x89HDF\r\n\x1a\n"),
    ("a gzip stream", b"\x1f\x8b\x08\x00" + os.urandom(100)),
]


@pytest.mark.parametrize("data", [d for _, d in LOOKALIKES], ids=[n for n, _ in LOOKALIKES])
def test_lookalikes_are_not_weights(data: bytes) -> None:
    assert sniff(data[:HEAD_BYTES], len(data), ciphertext_magic=CUSTOS_MAGIC) is None


def test_a_truncated_safetensors_head_is_judged_by_the_whole_file_size() -> None:
    data = safetensors(1 << 20)
    assert sniff(data[:HEAD_BYTES], len(data)) == "safetensors"
    assert sniff(data[:HEAD_BYTES], 50) is None  # its header could not fit in a 50-byte file


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=HEAD_BYTES), st.integers(min_value=0, max_value=1 << 40))
def test_sniff_never_raises(head: bytes, size: int) -> None:
    assert sniff(head, size, ciphertext_magic=CUSTOS_MAGIC) in {None, *(w for _, _, w in FORMATS)}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([d for _, d, _ in FORMATS]), st.integers(min_value=0, max_value=64), st.data())
def test_sniff_never_raises_on_damaged_headers(data: bytes, cut: int, draw: st.DataObject) -> None:
    """Truncated and bit-flipped real headers: an answer or None, never an exception."""
    damaged = bytearray(data[:max(0, len(data[:HEAD_BYTES]) - cut)])
    for i in draw.draw(st.lists(st.integers(0, max(0, len(damaged) - 1)), max_size=4)):
        if damaged:
            damaged[i] ^= 0xFF
    sniff(bytes(damaged), len(data))
