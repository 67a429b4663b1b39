"""Canary decoys: real files that parse as safetensors by the format's rules, with plausible
names, shapes and sizes, written sparse; and every way a canary must refuse to be planted
(an existing file, a symlink, the agent's own directories, bad input), leaving nothing behind."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.agent.canary import Canaries, CanarySettings, parse_canary_settings, tensor_bytes
from custos.agent.config import load_agent_config
from custos.core.canaries import (
    FAMILIES,
    MAX_BYTES,
    MIN_BYTES,
    architecture_for,
    check_canary_dir,
    config_canary_id,
    plan_decoys,
)
from custos.errors import InvalidInput

MiB = 1 << 20
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TENSOR_NAME = re.compile(
    r"model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight|"
    r"model\.layers\.(0|[1-9]\d*)\.(input_layernorm|post_attention_layernorm)\.weight|"
    r"model\.layers\.(0|[1-9]\d*)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)|"
    r"model\.layers\.(0|[1-9]\d*)\.mlp\.(gate|up|down)_proj\.weight")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in the header: {keys}"
    return dict(pairs)


def parse_safetensors(head: bytes, file_size: int) -> dict[str, Any]:
    """The safetensors format, checked by its own rules (independently of the code under test):
    an 8-byte little-endian header length N, N bytes of UTF-8 JSON starting with '{' (trailing
    spaces allowed), no duplicate keys, ``__metadata__`` a str -> str map, each tensor a known
    dtype, a shape of non-negative ints and data_offsets [begin, end] with end - begin the
    tensor's byte size; offsets contiguous from 0 and ending exactly at the end of the file.
    Also (as the reference writer does) the data starts 8-byte aligned."""
    assert len(head) >= 8
    (n,) = struct.unpack("<Q", head[:8])
    assert 2 <= n <= 100 * MiB and 8 + n <= file_size and len(head) >= 8 + n
    text = head[8:8 + n].decode("utf-8")
    assert text.startswith("{") and text.rstrip(" ").endswith("}")
    header = json.loads(text, object_pairs_hook=_no_duplicates)
    assert (8 + n) % 8 == 0
    meta = header.pop("__metadata__", {})
    assert isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    spans = []
    for name, info in header.items():
        assert set(info) == {"dtype", "shape", "data_offsets"}, name
        assert info["dtype"] in DTYPE_SIZE
        shape = info["shape"]
        assert isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        begin, end = info["data_offsets"]
        assert 0 <= begin <= end
        assert end - begin == math.prod(shape) * DTYPE_SIZE[info["dtype"]], name
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        assert begin == pos, f"{name}: offsets not contiguous"
        pos = end
    assert 8 + n + pos == file_size, "data does not end where the file ends"
    return {"meta": meta, "tensors": header, "data_start": 8 + n}


def check_plan_is_consistent(files: dict[str, tuple[int, bytes]]) -> dict[str, Any]:
    """Shards, index and config of one canary agree: names, shapes from config.json, layers, sizes."""
    shards = {n: parse_safetensors(h, size) for n, (size, h) in files.items() if n.endswith(".safetensors")}
    assert shards
    config = json.loads(files["config.json"][1])
    json.loads(files["generation_config.json"][1])
    tok = json.loads(files["tokenizer.json"][1])
    assert tok["model"]["type"] == "BPE" and len(tok["model"]["vocab"]) > 100
    every: dict[str, Any] = {}
    for n, parsed in shards.items():
        assert parsed["meta"] == {"format": "pt"}
        for t, info in parsed["tensors"].items():
            assert TENSOR_NAME.fullmatch(t), t
            assert t not in every, f"{t} in two shards"
            every[t] = (n, info)
    if len(shards) == 1:
        assert list(shards) == ["model.safetensors"] and "model.safetensors.index.json" not in files
    else:
        k = len(shards)
        assert sorted(shards) == [f"model-{i:05d}-of-{k:05d}.safetensors" for i in range(1, k + 1)]
        index = json.loads(files["model.safetensors.index.json"][1])
        assert index["weight_map"] == {t: n for t, (n, _) in every.items()}
        assert index["metadata"]["total_size"] == sum(i["data_offsets"][1] - i["data_offsets"][0]
                                                      for _, i in every.values())
    h, v, inter = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    hd = h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    layers = {int(t.split(".")[2]) for t in every if t.startswith("model.layers.")}
    assert layers == set(range(config["num_hidden_layers"]))
    dtype = {"bfloat16": "BF16", "float16": "F16"}[config["torch_dtype"]]
    want = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not config["tie_word_embeddings"]:
        want["lm_head.weight"] = [v, h]
    for i in layers:
        p = f"model.layers.{i}."
        want.update({p + "self_attn.q_proj.weight": [q, h], p + "self_attn.k_proj.weight": [kv, h],
                     p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, q],
                     p + "mlp.gate_proj.weight": [inter, h], p + "mlp.up_proj.weight": [inter, h],
                     p + "mlp.down_proj.weight": [h, inter], p + "input_layernorm.weight": [h],
                     p + "post_attention_layernorm.weight": [h]})
        if config["model_type"] == "qwen2":
            want.update({p + "self_attn.q_proj.bias": [q], p + "self_attn.k_proj.bias": [kv],
                         p + "self_attn.v_proj.bias": [kv]})
    assert {t: info["shape"] for t, (_, info) in every.items()} == want
    assert {info["dtype"] for _, info in every.values()} == {dtype}
    return config


@settings(max_examples=12, deadline=None)
@given(model=st.text(max_size=40), budget=st.integers(MIN_BYTES, 64 << 30))
def test_every_plan_is_valid_safetensors_that_adds_up(model: str, budget: int) -> None:
    plan = plan_decoys(model, max_bytes=budget, seed=b"s")
    files = {f.name: (f.size, f.head) for f in plan.files}
    check_plan_is_consistent(files)
    shards = [f for f in plan.files if f.shard]
    assert sum(f.size for f in shards) <= budget + 64 * len(shards) * 1024  # the budget bounds the tensors
    for f in shards:
        islands = f.islands
        assert islands and all(o % 2 == 0 and n % 2 == 0 for o, n in islands)
        assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(islands))
        assert islands[0][0] == len(f.head) and islands[-1][0] + islands[-1][1] == f.size


@pytest.mark.parametrize(("model", "budget", "family"), [
    ("", 1 << 30, "qwen2"),
    ("llama-2-7b-chat", 16 << 30, "llama"),
    ("Meta-Llama-3-8B", 32 << 30, "llama3"),
    ("mistral-7b-instruct", 16 << 30, "mistral"),
    ("TinyLlama-1.1B", 4 << 30, "tinyllama"),
    ("llama-2-7b", 1 << 30, "tinyllama"),  # too small a budget for two llama-2 layers: the next family down
    ("anything", MIN_BYTES, "toy"),
])
def test_the_model_name_picks_a_family_that_fits(model: str, budget: int, family: str) -> None:
    arch = architecture_for(model, budget)
    assert arch.family == family and arch.layers >= 2
    full = next(a for a in FAMILIES if a.family == family)
    assert arch.layers <= full.layers


@pytest.mark.parametrize("budget", [0, MIN_BYTES - 1, MAX_BYTES + 1, -5])
def test_a_budget_out_of_range_is_refused(budget: int) -> None:
    with pytest.raises(InvalidInput):
        plan_decoys("", max_bytes=budget)


def test_tensor_bytes_read_as_small_weights_not_zeros_or_noise() -> None:
    for dtype in ("BF16", "F16"):
        data = tensor_bytes(1 << 16, dtype)
        assert data.count(0) < len(data) // 64
        if dtype == "BF16":
            vals = [struct.unpack("<f", b"\x00\x00" + data[i:i + 2])[0] for i in range(0, len(data), 2)]
        else:
            vals = list(struct.unpack(f"<{len(data) // 2}e", data))
        assert all(math.isfinite(x) and 2 ** -10 <= abs(x) < 2 ** -3 for x in vals)
        assert 0.4 < sum(x > 0 for x in vals) / len(vals) < 0.6


# -- planting on disk ------------------------------------------------------------------------


class Host:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "models"
        self.root.mkdir()
        self.state = self.root / "state"  # the agent's state dir, here inside a scan root
        self.state.mkdir(mode=0o700)
        self.plaintext = self.root / "plaintext"  # a managed directory inside a scan root
        self.plaintext.mkdir()
        self.canaries = self.make()

    def make(self, **kw: Any) -> Canaries:
        c = Canaries(host="gpu-1", state_dir=kw.pop("state", self.state), scan_roots=[self.root, self.tmp / "r2"],
                     managed=lambda: [self.state, self.plaintext],
                     settings=kw.pop("settings", CanarySettings(max_bytes=MIN_BYTES)))
        c.load()
        return c

    def tree(self) -> dict[str, tuple[str, int]]:
        """Every entry under tmp (but the state dir): kind and size, to show nothing changed."""
        out = {}
        for dirpath, dirs, names in os.walk(self.tmp, followlinks=False):
            for n in dirs + names:
                p = os.path.join(dirpath, n)
                st_ = os.lstat(p)
                kind = "l" if os.path.islink(p) else "d" if os.path.isdir(p) else "f"
                out[p] = (kind, 0 if kind == "d" else st_.st_size)
        return out


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    yield Host(tmp_path)


CID = "00112233aabbccdd"


def test_a_planted_canary_is_real_safetensors_sparse_and_reported(host: Host) -> None:
    d = str(host.root / "team" / "llama-ft")
    res = host.canaries.plant(CID, d, "llama-2-7b")
    assert not res.error and res.canary_id == CID and res.dir == d
    files: dict[str, tuple[int, bytes]] = {}
    for f in res.files:
        p = Path(f.path)
        assert p.parent == Path(d) and os.stat(p).st_mode & 0o777 == 0o644
        data = p.read_bytes()
        assert len(data) == f.size and hashlib.sha256(data).hexdigest() == f.sha256
        files[p.name] = (f.size, data)
    assert os.stat(d).st_mode & 0o777 == 0o755
    check_plan_is_consistent(files)
    for name, (size, data) in files.items():
        if name.endswith(".safetensors"):
            start = parse_safetensors(data, size)["data_start"]
            assert data[start:start + 4096].count(0) < 256  # the first tensor bytes look like weights
    # Written sparse: a decoy of GBs costs no disk (a larger budget, another directory).
    big = host.make(settings=CanarySettings(max_bytes=1 << 30))
    res2 = big.plant("00112233aabbccde", str(host.root / "qwen"), "")
    shard = max(res2.files, key=lambda f: f.size)
    assert shard.size > 200 * MiB and os.stat(shard.path).st_blocks * 512 < shard.size // 20
    # Kept across restarts, reported on every connection, hidden from the inventory as planted.
    again = host.make()
    assert {r.canary_id for r in again.reports()} == {CID, "00112233aabbccde"}
    f0 = res.files[0]
    assert again.hides(f0.path, f0.sha256) and not again.hides(f0.path, "0" * 64)
    assert not again.hides(str(host.root / "other.safetensors"), f0.sha256)
    assert again.watched()[f0.path] == CID
    os.unlink(f0.path)
    assert f0.path not in again.watched()
    # Asked again (a lost answer): the same files, nothing rewritten.
    mtimes = {f.path: os.stat(f.path).st_mtime_ns for f in res.files[1:]}
    assert again.plant(CID, d, "llama-2-7b").files == res.files
    assert {f.path: os.stat(f.path).st_mtime_ns for f in res.files[1:]} == mtimes


def _refused(host: Host, path: str, *, cid: str = CID, model: str = "", want: str = "") -> None:
    before = host.tree()
    res = host.canaries.plant(cid, path, model)
    assert res.error and not res.files, res
    assert want.lower() in res.error.lower(), res.error
    assert host.tree() == before, "a refused canary left something behind"
    assert host.canaries.reports() == []


def test_a_canary_never_overwrites_an_existing_file(host: Host) -> None:
    d = host.root / "m"
    d.mkdir()
    (d / "config.json").write_text('{"mine": true}')
    _refused(host, str(d), want="exists")
    assert (d / "config.json").read_text() == '{"mine": true}'


@pytest.mark.parametrize("dangling", [True, False])
def test_a_symlink_at_a_decoy_name_is_refused_and_its_target_untouched(host: Host, dangling: bool) -> None:
    d = host.root / "m"
    d.mkdir()
    target = host.tmp / "outside.txt"
    if not dangling:
        target.write_text("precious")
    (d / "model-00001-of-00004.safetensors").symlink_to(target)
    _refused(host, str(d), want="exists")
    assert (target.read_text() == "precious") if not dangling else not target.exists()


def test_a_symlink_in_the_path_is_refused(host: Host) -> None:
    elsewhere = host.tmp / "elsewhere"
    elsewhere.mkdir()
    (host.root / "link").symlink_to(elsewhere)
    _refused(host, str(host.root / "link" / "m"), want="symlink")
    _refused(host, str(host.root / "link"), want="symlink")
    assert list(elsewhere.iterdir()) == []
    (host.root / "afile").write_text("x")
    _refused(host, str(host.root / "afile" / "m"), want="not a directory")


@pytest.mark.parametrize("where", ["state", "plaintext", "plaintext/run1/artifact", "outside", "root-parent"])
def test_paths_outside_the_scan_roots_or_in_managed_dirs_are_refused(host: Host, where: str) -> None:
    path = {"state": host.state / "x", "plaintext": host.plaintext, "plaintext/run1/artifact":
            host.plaintext / "run1" / "artifact", "outside": host.tmp / "elsewhere" / "m",
            "root-parent": host.tmp}[where]
    _refused(host, str(path), want="scan roots" if where in ("outside", "root-parent") else "agent's own")
    assert not (host.plaintext / "run1").exists()


def test_a_managed_dir_reached_through_a_symlink_outside_the_roots_is_refused(host: Host) -> None:
    # The managed directory is named by a path the canary's real path resolves into.
    real = host.root / "shm"
    real.mkdir()
    alias = host.tmp / "alias"
    alias.symlink_to(real)
    c = Canaries(host="gpu-1", state_dir=host.state, scan_roots=[host.root], managed=lambda: [alias],
                 settings=CanarySettings(max_bytes=MIN_BYTES))
    res = c.plant(CID, str(real / "m"), "")
    assert "agent's own" in res.error and not (real / "m").exists()


@pytest.mark.parametrize(("cid", "path", "model", "want"), [
    ("", "/models/x", "", "canary id"),
    ("00112233AABBCCDD", "@", "", "canary id"),
    ("0011", "@", "", "canary id"),
    ("zz112233aabbccdd", "@", "", "canary id"),
    (CID, "", "", "required"),
    (CID, "relative/dir", "", "absolute"),
    (CID, "@/../x", "", "normalized"),
    (CID, "@//x", "", "normalized"),
    (CID, "@/x/", "", "normalized"),
    (CID, "/", "", "normalized"),
    (CID, "@/x\x00y", "", "control"),
    (CID, "@/x\ny", "", "control"),
    (CID, "@/" + "a" * 1100, "", "longer"),
    (CID, "@/x", "m" * 200, "model"),
    (CID, "@/x", "m\x07", "model"),
])
def test_bad_input_is_refused_and_changes_nothing(host: Host, cid: str, path: str, model: str, want: str) -> None:
    _refused(host, path.replace("@", str(host.root)), cid=cid, model=model, want=want)


def test_one_canary_per_directory_and_one_directory_per_canary(host: Host) -> None:
    d = str(host.root / "a")
    assert not host.canaries.plant(CID, d, "").error
    res = host.canaries.plant("ffeeddccbbaa9988", d, "")
    assert "another canary" in res.error
    res = host.canaries.plant(CID, str(host.root / "b"), "")
    assert "planted at" in res.error and not (host.root / "b").exists()


def test_a_failure_part_way_removes_what_was_written(host: Host) -> None:
    bad_state = host.tmp / "state-is-a-file"
    bad_state.write_text("")
    c = host.make(state=bad_state)
    before = host.tree()
    res = c.plant(CID, str(host.root / "deep" / "m"), "")
    assert res.error and not res.files
    assert host.tree() == before and not (host.root / "deep").exists()
    assert not c.hides(str(host.root / "deep" / "m" / "config.json"), "")


def test_config_canaries_have_ids_from_host_and_path_and_failures_are_reported(host: Host) -> None:
    good, bad = str(host.root / "cfg"), str(host.tmp / "not-a-root" / "cfg")
    c = host.make(settings=CanarySettings(paths=(good, bad), max_bytes=MIN_BYTES))
    out = {r.dir: r for r in c.plant_configured()}
    assert out[good].canary_id == config_canary_id("gpu-1", good) and not out[good].error
    assert out[bad].canary_id == config_canary_id("gpu-1", bad) and "scan roots" in out[bad].error
    assert {r.dir for r in c.reports()} == {good, bad}
    again = host.make(settings=CanarySettings(paths=(good,), max_bytes=MIN_BYTES))
    assert [r.files for r in again.plant_configured()] == [out[good].files]  # idempotent across restarts


def test_an_unreadable_canary_list_is_not_fatal(host: Host) -> None:
    (host.state / "canaries.json").write_text("{not json")
    c = host.make()
    assert c.reports() == []
    assert not c.plant(CID, str(host.root / "x"), "").error
    assert [r.canary_id for r in host.make().reports()] == [CID]


@pytest.mark.parametrize(("section", "want"), [
    ('paths = ["/models/decoy"]\nmodel = "llama"\nmax_bytes = 16777216', None),
    ('paths = ["rel/decoy"]', None),
    ('paths = ["/models/../etc"]', None),  # normalized like every config path: /etc (refused at planting)
    ('paths = ["/"]', "normalized"),
    ('paths = ["/a", "/a"]', "twice"),
    ('paths = [""]', "non-empty"),
    ("max_bytes = 1", "max_bytes"),
    ('model = "x\\u0001"', "printable"),
    ('paths = "/models"', "must be a list"),
    ("unknown = 1", "unknown key"),
])
def test_the_canary_config_section(tmp_path: Path, section: str, want: str | None) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'name = "h1"\n[control_plane]\naddr = "127.0.0.1:1"\nca_file = "ca.pem"\n'
                   f'[scan]\nroots = ["/models"]\n[canary]\n{section}\n')
    if want is None:
        c = load_agent_config(cfg).canary
        assert all(check_canary_dir(p) == p for p in c.paths)
        expect = {"rel/decoy": str(tmp_path / "rel" / "decoy"), "/models/../etc": "/etc",
                  "/models/decoy": "/models/decoy"}
        assert c.paths == tuple(v for k, v in expect.items() if f'"{k}"' in section)
        return
    with pytest.raises(InvalidInput, match=want):
        load_agent_config(cfg)


def test_parse_canary_settings_defaults() -> None:
    s = parse_canary_settings(Path("/etc/custos/agent.toml"), {})
    assert s == CanarySettings()


def test_a_request_delivered_twice_at_once_plants_once(host: Host) -> None:
    # A reconnect re-sends a pending canary while the first request is still being planted.
    from concurrent.futures import ThreadPoolExecutor

    d = str(host.root / "twice")
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: host.canaries.plant(CID, d, ""), range(2))
    assert not a.error and not b.error and a.files == b.files
