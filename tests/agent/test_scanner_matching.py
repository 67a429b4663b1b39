"""The scanner's records, matched against a registered manifest: renamed, copied and ciphertext files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from custos.agent.scanner import ScanConfig, Scanner
from custos.core.matching import ArtifactFile, match_inventory
from custos.fs.hashing import build_manifest


def test_end_to_end_with_real_files(tmp_path: Path) -> None:
    """Register a directory, copy it, rename a shard, encrypt-like one file; scan; match."""
    src = tmp_path / "registered"
    (src / "sub").mkdir(parents=True)
    for name, size in [
        ("model-00001.safetensors", 70_000),
        ("model-00002.safetensors", 50_000),
        ("sub/tokenizer.bin", 1000),
    ]:
        (src / name).write_bytes(os.urandom(size))
    man = build_manifest(src)
    host = tmp_path / "host"
    shutil.copytree(src, host / "mnt" / "copy")
    (host / "loose").mkdir()
    shutil.copy(src / "model-00002.safetensors", host / "loose" / "innocent.bin")
    (host / "loose" / "new.safetensors").write_bytes(b"unregistered weights")
    (host / "enc").mkdir()
    (host / "enc" / "blob.bin").write_bytes(b"\x89CUSTOS\n" + os.urandom(64))
    (tmp_path / "state").mkdir()
    with Scanner(ScanConfig(roots=[host], workers=2), tmp_path / "state" / "c.db") as s:
        res = s.scan()
    m = match_inventory({man.artifact_id: man}, res.records)
    assert [(c.artifact_id, c.location) for c in m.complete] == [(man.artifact_id, str(host / "mnt" / "copy"))]
    innocent = next(f for f in m.files if f.path.endswith("innocent.bin"))
    assert innocent.renamed and innocent.refs == (ArtifactFile(man.artifact_id, "model-00002.safetensors"),)
    (loose,) = m.partial
    assert (loose.location, len(loose.files), loose.total) == (str(host / "loose"), 1, 3)
    assert [u.path for u in m.unregistered] == [str(host / "loose" / "new.safetensors")]
    assert [c.path for c in m.ciphertext] == [str(host / "enc" / "blob.bin")]
