"""Canaries, pure: decoy weight files that look real, and the rules both sides share.

A canary is a directory of decoy files an agent writes on its host: safetensors
shards with a valid header (8-byte little-endian header length, a JSON header
naming the tensors of a plausible architecture, ``__metadata__``, contiguous data
offsets that end where the file ends), ``config.json``, ``generation_config.json``,
``tokenizer.json`` and, for several shards, ``model.safetensors.index.json`` — the
set a Hugging Face checkpoint has. Any open of one of them is an incident.

This module plans the decoys (:func:`plan_decoys`: names, sizes, header bytes and
where random tensor bytes go; the rest of each shard is a hole of zeros) and holds
the identifiers and checks the control plane and the agent share: canary ids,
:func:`config_canary_id` for canaries an agent plants from its own configuration,
and :func:`check_canary_dir`. The agent writes the plan (custos.agent.canary);
docs/agent.md ("Canaries") says why the decoys are made the way they are.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from custos.errors import InvalidInput

CANARY_ID = re.compile(r"[0-9a-f]{16}")
MAX_DIR_BYTES = 1024
MAX_FILES = 16  # decoy files per canary (shards + the JSON files)
MIN_BYTES = 8 << 20  # the smallest decoy budget: the toy architecture's few layers
MAX_BYTES = 64 << 30
DEFAULT_BYTES = 1 << 30  # hashed once at plant time: about a second
MAX_SHARDS = 8

_DTYPE_SIZE = {"BF16": 2, "F16": 2}
_TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16"}

# Random tensor bytes at the start of each shard's data, of each tensor and at its end;
# the rest is a hole. Enough for `xxd | head`, `tail -c`, and a look at any tensor's
# first values; bounded so that planting costs a few MiB of writes per shard at most.
HEAD_ISLAND = 256 << 10
TENSOR_ISLAND = 4 << 10
TAIL_ISLAND = 64 << 10
MAX_TENSOR_ISLANDS = 512


def check_canary_id(canary_id: str) -> str:
    """Raises InvalidInput unless ``canary_id`` is 16 lowercase hex digits."""
    if not isinstance(canary_id, str) or not CANARY_ID.fullmatch(canary_id):
        raise InvalidInput(f"bad canary id {str(canary_id)[:40]!r}: want 16 hex digits")
    return canary_id


def config_canary_id(host: str, path: str) -> str:
    """The id of a canary an agent plants from its own config: a digest of host and directory,
    so both sides name it alike and a host cannot claim another canary's id."""
    h = hashlib.sha256(b"custos.v1.canary-id\x00" + host.encode() + b"\x00" + path.encode())
    return h.hexdigest()[:16]


def check_canary_dir(path: str) -> str:
    """A canary's directory: absolute, normalized (no ``.``, ``..``, ``//`` or trailing ``/``),
    not ``/``, printable, at most 1024 bytes. Returns it; raises InvalidInput."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("canary path is required (an absolute directory on the host)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise InvalidInput("canary path holds control characters")
    try:
        n = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("canary path is not valid UTF-8") from None
    if n > MAX_DIR_BYTES:
        raise InvalidInput(f"canary path longer than {MAX_DIR_BYTES} bytes")
    if not path.startswith("/") or path.startswith("//"):
        raise InvalidInput(f"canary path must be absolute: {path[:80]!r}")
    if posixpath.normpath(path) != path or path == "/":
        raise InvalidInput(f"canary path must be a normalized directory other than /: {path[:80]!r}")
    return path


def check_decoy_name(name: str) -> str:
    """One file name in a canary's directory (no separator, not ``.``/``..``). Raises InvalidInput."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\x00" in name
            or len(name.encode("utf-8", "replace")) > 255 or any(ord(c) < 0x20 for c in name)):
        raise InvalidInput(f"bad decoy file name {str(name)[:80]!r}")
    return name


# -- architectures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Architecture:
    """A decoder-only transformer as Hugging Face describes it (config.json), enough to name its tensors."""

    family: str  # which table row
    model_type: str  # config.json model_type
    architecture: str  # config.json architectures[0]
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # lm_head shares the embedding
    qkv_bias: bool
    dtype: str  # BF16 | F16
    max_position: int
    rope_theta: float
    rms_eps: float
    bos: int
    eos: int
    sentencepiece: bool  # "▁" word marks (Llama 2, Mistral) or byte-level "Ġ" (GPT-2 style)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def with_layers(self, n: int) -> Architecture:
        return replace(self, layers=n)


FAMILIES: Sequence[Architecture] = (
    # Largest first: a budget too small for two layers of one falls through to the next.
    Architecture("llama3", "llama", "LlamaForCausalLM", 4096, 32, 14336, 32, 8, 128256, False, False, "BF16",
                 8192, 500000.0, 1e-05, 128000, 128001, False),
    Architecture("mistral", "mistral", "MistralForCausalLM", 4096, 32, 14336, 32, 8, 32000, False, False, "BF16",
                 32768, 1000000.0, 1e-05, 1, 2, True),
    Architecture("llama", "llama", "LlamaForCausalLM", 4096, 32, 11008, 32, 32, 32000, False, False, "F16",
                 4096, 10000.0, 1e-05, 1, 2, True),
    Architecture("tinyllama", "llama", "LlamaForCausalLM", 2048, 22, 5632, 32, 4, 32000, False, False, "BF16",
                 2048, 10000.0, 1e-05, 1, 2, True),
    Architecture("qwen2", "qwen2", "Qwen2ForCausalLM", 896, 24, 4864, 14, 2, 151936, True, True, "BF16",
                 32768, 1000000.0, 1e-06, 151643, 151643, False),
    Architecture("smollm", "llama", "LlamaForCausalLM", 576, 30, 1536, 9, 3, 49152, True, False, "BF16",
                 2048, 10000.0, 1e-05, 0, 0, False),
    Architecture("toy", "llama", "LlamaForCausalLM", 128, 4, 352, 4, 4, 8192, False, False, "BF16",
                 2048, 10000.0, 1e-05, 1, 2, True),
)
_BY_NAME = {a.family: a for a in FAMILIES}
# A model's name hints at what its weights look like: first match wins.
_HINTS = (("tinyllama", "tinyllama"), ("llama-3", "llama3"), ("llama3", "llama3"), ("mistral", "mistral"),
          ("mixtral", "mistral"), ("llama", "llama"), ("qwen", "qwen2"), ("smol", "smollm"),
          ("70b", "llama3"), ("34b", "llama3"), ("13b", "llama"), ("8b", "llama3"), ("7b", "mistral"),
          ("1.1b", "tinyllama"), ("1b", "tinyllama"), ("0.5b", "qwen2"), ("135m", "smollm"))
DEFAULT_FAMILY = "qwen2"


def tensors(arch: Architecture) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor's name and shape, in the order a PyTorch state dict holds them."""
    h, hd = arch.hidden, arch.head_dim
    q, kv = arch.heads * hd, arch.kv_heads * hd
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (arch.vocab, h))]
    for i in range(arch.layers):
        p = f"model.layers.{i}."
        out.append((p + "self_attn.q_proj.weight", (q, h)))
        if arch.qkv_bias:
            out.append((p + "self_attn.q_proj.bias", (q,)))
        out.append((p + "self_attn.k_proj.weight", (kv, h)))
        if arch.qkv_bias:
            out.append((p + "self_attn.k_proj.bias", (kv,)))
        out.append((p + "self_attn.v_proj.weight", (kv, h)))
        if arch.qkv_bias:
            out.append((p + "self_attn.v_proj.bias", (kv,)))
        out += [(p + "self_attn.o_proj.weight", (h, q)),
                (p + "mlp.gate_proj.weight", (arch.intermediate, h)),
                (p + "mlp.up_proj.weight", (arch.intermediate, h)),
                (p + "mlp.down_proj.weight", (h, arch.intermediate)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if not arch.tied:
        out.append(("lm_head.weight", (arch.vocab, h)))
    return out


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = _DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


def weight_bytes(arch: Architecture) -> int:
    return sum(_nbytes(s, arch.dtype) for _, s in tensors(arch))


def architecture_for(model: str, max_bytes: int) -> Architecture:
    """The architecture decoys for ``model`` imitate within ``max_bytes`` of tensors: the family
    its name hints at (else qwen2-0.5B-like), with as many of its layers as fit; a budget too
    small for two layers falls through to the next smaller family. Raises InvalidInput."""
    if not isinstance(max_bytes, int) or not MIN_BYTES <= max_bytes <= MAX_BYTES:
        raise InvalidInput(f"canary size budget must be {MIN_BYTES >> 20} MiB to {MAX_BYTES >> 30} GiB")
    low = (model or "").lower()
    family = next((f for hint, f in _HINTS if hint in low), DEFAULT_FAMILY)
    start = next(i for i, a in enumerate(FAMILIES) if a.family == family)
    for arch in FAMILIES[start:]:
        fixed = weight_bytes(arch.with_layers(0))
        per_layer = weight_bytes(arch.with_layers(1)) - fixed
        fit = min(arch.layers, max(0, (max_bytes - fixed) // per_layer))
        if fit >= min(2, arch.layers):
            return arch.with_layers(int(fit))
    raise InvalidInput("canary size budget too small for any architecture")  # MIN_BYTES fits the toy


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecoyFile:
    """One file to write: ``head`` at offset 0, random tensor bytes (shaped like ``dtype``
    values) over each ``islands`` range, zeros (a hole) everywhere else, ``size`` bytes in all."""

    name: str
    size: int
    head: bytes
    islands: tuple[tuple[int, int], ...] = ()  # (offset, length), sorted, disjoint, even
    dtype: str = ""

    @property
    def shard(self) -> bool:
        return self.name.endswith(".safetensors")


@dataclass(frozen=True, slots=True)
class DecoyPlan:
    architecture: Architecture
    files: tuple[DecoyFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def safetensors_head(entries: Sequence[tuple[str, tuple[int, ...]]], dtype: str) -> tuple[bytes, int]:
    """The first bytes of a safetensors file holding ``entries`` (name, shape): the 8-byte
    little-endian header length and the JSON header (tensors by name, ``__metadata__`` first,
    offsets contiguous from 0), padded with spaces so the data starts 8-byte aligned. Returns
    (head, data length)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in sorted(entries):
        n = _nbytes(shape, dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text, offset


def _islands(data_start: int, offsets: Sequence[int], data_len: int) -> tuple[tuple[int, int], ...]:
    want = [(0, HEAD_ISLAND)] + [(o, TENSOR_ISLAND) for o in offsets[:MAX_TENSOR_ISLANDS]]
    want.append((max(0, data_len - TAIL_ISLAND), TAIL_ISLAND))
    merged: list[list[int]] = []
    for start, n in sorted(want):
        end = min(data_len, start + n)
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((data_start + s, e - s) for s, e in merged)


def _shards(arch: Architecture, limit: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Hugging Face's rule: tensors in state-dict order, a new shard when the next would overflow it."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors(arch):
        n = _nbytes(shape, arch.dtype)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _json(obj: object) -> bytes:
    # As transformers writes them: sorted keys, two-space indent, a final newline.
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _config(arch: Architecture) -> dict[str, object]:
    c: dict[str, object] = {
        "architectures": [arch.architecture], "attention_dropout": 0.0, "bos_token_id": arch.bos,
        "eos_token_id": arch.eos, "hidden_act": "silu", "hidden_size": arch.hidden, "initializer_range": 0.02,
        "intermediate_size": arch.intermediate, "max_position_embeddings": arch.max_position,
        "model_type": arch.model_type, "num_attention_heads": arch.heads, "num_hidden_layers": arch.layers,
        "num_key_value_heads": arch.kv_heads, "rms_norm_eps": arch.rms_eps, "rope_theta": arch.rope_theta,
        "tie_word_embeddings": arch.tied, "torch_dtype": _TORCH_DTYPE[arch.dtype],
        "transformers_version": "4.44.2", "use_cache": True, "vocab_size": arch.vocab,
    }
    if arch.model_type == "llama":
        c.update(attention_bias=False, mlp_bias=False, pretraining_tp=1, rope_scaling=None)
    if arch.model_type == "mistral":
        c["sliding_window"] = None
    if arch.model_type == "qwen2":
        c.update(max_window_layers=arch.layers, sliding_window=arch.max_position, use_sliding_window=False)
    return c


_SYLLABLES = ("th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed",
              "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co",
              "me", "de", "hi", "ri", "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si")


def _tokenizer(arch: Architecture, seed: bytes, max_tokens: int = 32000) -> dict[str, object]:
    """A BPE tokenizer.json of plausible shape: byte or character tokens, then merges of them."""
    rng = random.Random(seed)  # noqa: S311 - decoy text, not a secret
    mark = "\u2581" if arch.sentencepiece else "\u0120"
    specials = ["<unk>", "<s>", "</s>"] if arch.sentencepiece else ["<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in specials:
        vocab[t] = len(vocab)
    if arch.sentencepiece:
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in [chr(i) for i in range(33, 127)] + [mark]:
        vocab.setdefault(ch, len(vocab))
    merges: list[str] = []
    pieces = [*_SYLLABLES, *(mark + s for s in _SYLLABLES)]
    target = min(arch.vocab - 8, max_tokens)
    tokens = [t for t in vocab if len(t) == 1]
    while len(vocab) < target:
        left = rng.choice(pieces) if rng.random() < 0.4 else rng.choice(tokens[-4000:] or tokens)
        right = rng.choice(tokens[:200]) if rng.random() < 0.7 else rng.choice(_SYLLABLES)
        new = left + right
        if new in vocab or len(new) > 16 or right.startswith(mark):
            continue
        vocab[new] = len(vocab)
        merges.append(f"{left} {right}")
        tokens.append(new)
    added = [{"content": t, "id": vocab[t], "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True} for t in specials]
    model: dict[str, object] = {"type": "BPE", "dropout": None, "unk_token": specials[0] if arch.sentencepiece
                                else None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                                "fuse_unk": arch.sentencepiece, "byte_fallback": arch.sentencepiece,
                                "vocab": vocab, "merges": merges}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": mark}, {"type": "Replace", "pattern": {"String": " "},
                                                       "content": mark}]} if arch.sentencepiece else None,
            "pre_tokenizer": None if arch.sentencepiece else {
                "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                                                "trim_offsets": True, "use_regex": True},
            "model": model}


def plan_decoys(model: str, *, max_bytes: int = DEFAULT_BYTES, seed: bytes = b"") -> DecoyPlan:
    """The files of one canary imitating ``model`` (a name; may be empty) in at most about
    ``max_bytes`` of shards: about four shards when the budget allows, one
    ``model.safetensors`` below it. ``seed`` makes the tokenizer's text. Raises InvalidInput."""
    arch = architecture_for(model, max_bytes)
    total = weight_bytes(arch)
    limit = max(1, -(-total // 4))
    groups = _shards(arch, limit)
    while len(groups) > MAX_SHARDS:  # one huge tensor per shard (an embedding): widen the limit
        limit *= 2
        groups = _shards(arch, limit)
    n = len(groups)
    files: list[DecoyFile] = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        name = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        head, data_len = safetensors_head(group, arch.dtype)
        offsets, off = [], 0
        for _, shape in sorted(group):
            offsets.append(off)
            off += _nbytes(shape, arch.dtype)
        files.append(DecoyFile(name=name, size=len(head) + data_len, head=head,
                               islands=_islands(len(head), offsets, data_len), dtype=arch.dtype))
        weight_map.update({t: name for t, _ in group})
    meta: list[DecoyFile] = [
        DecoyFile("config.json", 0, _json(_config(arch))),
        DecoyFile("generation_config.json", 0, _json({"_from_model_config": True, "bos_token_id": arch.bos,
                                                      "eos_token_id": arch.eos, "transformers_version": "4.44.2"})),
        DecoyFile("tokenizer.json", 0, json.dumps(_tokenizer(arch, seed), ensure_ascii=False).encode()),
    ]
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        meta.append(DecoyFile("model.safetensors.index.json", 0, _json(index)))
    files += [DecoyFile(f.name, len(f.head), f.head) for f in meta]
    return DecoyPlan(architecture=arch, files=tuple(files))
