"""Recognise weight formats by their first bytes (pure): what the scanner hashes whatever a file is named.

:func:`sniff` looks at the first :data:`HEAD_BYTES` of a file and names the
weight format they begin, or returns None. Every rule reads only those bytes
and is cheap; false positives cost one hash, false negatives a renamed copy
below the size threshold that goes unseen, so the rules lean towards yes:

- ``safetensors``: an 8-byte little-endian header length that fits in the file
  (and in safetensors' 100 MB header limit), then ``{``;
- ``gguf``: the ``GGUF`` magic, and the older ``ggml`` / ``ggmf`` / ``ggjt`` ones;
- ``pytorch-zip``: a zip (``PK\\x03\\x04``) whose first entry is one PyTorch
  writes (``*/data.pkl``, ``*/.format_version``, ``*/byteorder``, ``*/version``,
  ``*/data/N``, ``*/.data/*``, ``*/constants.pkl``, ``*/code/*``) or whose head
  names ``data.pkl``; ``numpy-zip``: a zip whose first entry is an ``.npy``;
- ``pickle``: protocol 2 to 5 (``\\x80`` then the protocol; the legacy
  ``torch.save`` format and joblib start so);
- ``numpy``: ``\\x93NUMPY``; ``hdf5``: the HDF5 signature at 0, 512, 1024 or
  2048 (Keras ``.h5``);
- ``onnx`` (best effort): an ONNX ``ModelProto`` serialises ``ir_version``
  (field 1) first and its fields in number order, so the head must parse as
  ModelProto fields in increasing order — known numbers and wire types, UTF-8
  names — up to the ``graph`` or ``opset_import`` field;
- ``custos-ciphertext``: the Custos chunked-format magic.

Not recognised: raw tensor dumps without a header (TensorFlow ``.data-*``
shards, ONNX external data, TensorRT engines), msgpack (Flax), and anything
compressed or encrypted; those are found by name or by size only.
"""

from __future__ import annotations

import struct

HEAD_BYTES = 4096  # one page: every rule below decides within it
SNIFF_MIN_SIZE = 16  # smaller files cannot hold any of these headers and a tensor

_SAFETENSORS_MAX_HEADER = 100_000_000
_HDF5 = b"\x89HDF\r\n\x1a\n"
_GGML = (b"GGUF", b"lmgg", b"fmgg", b"tjgg")  # gguf; ggml, ggmf, ggjt (uint32 little-endian)
_TORCH_FIRST = (b"data.pkl", b".format_version", b"byteorder", b"version", b"constants.pkl")
# ModelProto: field number -> wire type (0 varint, 2 length-delimited)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_ONNX_TEXT = (2, 3, 4)  # producer_name, producer_version, domain


def sniff(head: bytes, size: int, *, ciphertext_magic: bytes = b"") -> str | None:
    """The weight format ``head`` (a file's first bytes) begins, or None (pure, never raises).

    ``size`` is the whole file's size; ``ciphertext_magic`` the Custos chunked
    format's magic, which counts as a weight format too.
    """
    if len(head) < 4:
        return None
    if ciphertext_magic and head.startswith(ciphertext_magic):
        return "custos-ciphertext"
    if head[:4] in _GGML:
        return "gguf"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if any(head[off:off + 8] == _HDF5 for off in (0, 512, 1024, 2048)):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(head)
    if _is_safetensors(head, size):
        return "safetensors"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if _is_onnx(head, size):
        return "onnx"
    return None


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


def _zip_kind(head: bytes) -> str | None:
    if len(head) < 30:
        return None
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    name = head[30:30 + name_len]
    if name.lower().endswith(b".npy"):
        return "numpy-zip"
    # torch.save writes ARCHIVE/data.pkl first (ARCHIVE: "archive" or the file's stem).
    top, slash, rest = name.partition(b"/")
    if top and slash and (rest in _TORCH_FIRST or rest.startswith((b".data/", b"code/"))
                          or (rest.startswith(b"data/") and rest[5:].isdigit())):
        return "pytorch-zip"
    if b"/data.pkl" in head[30 + name_len + extra_len:]:
        return "pytorch-zip"
    return None


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(buf) and shift < 64:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


def _is_onnx(head: bytes, size: int) -> bool:
    if head[0] != 0x08 or not 1 <= head[1] <= 30:  # ir_version, a small varint
        return False
    pos, last = 0, 0
    while pos < len(head):
        tag = _varint(head, pos)
        if tag is None:
            return False
        key, pos = tag
        field, wire = key >> 3, key & 7
        if _ONNX_FIELDS.get(field) != wire or field <= last:
            return False
        last = field
        got = _varint(head, pos)
        if got is None:
            return False
        value, pos = got
        if wire == 0:
            continue
        if field in (7, 8):  # graph, opset_import: the model itself
            return 0 < value <= size - pos
        if field in _ONNX_TEXT:
            try:
                head[pos:pos + value].decode("utf-8")
            except UnicodeDecodeError:
                return False
        pos += value
    return False
