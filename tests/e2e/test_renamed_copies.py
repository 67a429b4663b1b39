"""Custody by content: a real control plane and a real agent; registered weights planted under other names.

The attacker copies a registered artifact's files onto a scanned host as
``renamed.bin``, ``notes.txt``, ``model.safetensors.bak``, a file without an
extension deep in a tree, a ``readme.md`` below the size threshold (found by its
safetensors header) and a hard link of an authorized copy's file. Each must show
in ``custos copies`` — complete where every file is there, ``partial`` with n of m
where not — and raise an unauthorized-copy alert, as a copy at its manifest's
paths does; the authorized copy raises none. A symlink holds no bytes and is no
copy. Files hashed only for their size that match nothing raise no alert; a
partial copy goes stale with its host's lease as a complete one does.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from custos.fs.hashing import build_manifest
from tests.e2e.conftest import AgentProc, Api, server_config, unique, wait_until
from tests.servers.custos import DevServer

pytestmark = pytest.mark.slow

KiB = 1 << 10
THRESHOLD = 64 * KiB  # the agent's scan.min_size here: the 128 KiB shard is above it, the 8 KiB one below


def safetensors_file(n_bytes: int) -> bytes:
    header = json.dumps({"w": {"dtype": "U8", "shape": [n_bytes], "data_offsets": [0, n_bytes]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + os.urandom(n_bytes)


@dataclass
class Host:
    server: DevServer
    api: Api
    agent: AgentProc
    weights: Path
    artifact: str

    def copies(self) -> dict[str, dict[str, Any]]:
        res = self.server.cli("copies", "m1", "-o", "json", check=True)
        return {c["location"]: c for c in json.loads(res.stdout)["copies"] if c["location_kind"] == "host-path"}

    def alerts(self) -> list[dict[str, Any]]:
        res = self.server.cli("alerts", "--host", self.agent.name, "-o", "json", check=True)
        return [a for a in json.loads(res.stdout) if a["rule"] == "unauthorized-copy"]

    def at(self, rel: str) -> str:
        return f"{self.agent.name}:{self.agent.root / rel}" if rel else f"{self.agent.name}:{self.agent.root}"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    base = tmp_path_factory.mktemp("renamed")
    server = DevServer(base / "cp", extra=["--config", str(server_config(base / "cp.toml"))]).start()
    agent: AgentProc | None = None
    api: Api | None = None
    try:
        server.cli("model", "register", "m1", "--training-flops", "3e26", check=True)
        weights = base / "weights"
        (weights / "shards").mkdir(parents=True)
        (weights / "model-00001.safetensors").write_bytes(safetensors_file(8 * KiB))  # below the threshold
        (weights / "shards" / "model-00002.safetensors").write_bytes(os.urandom(128 * KiB))  # no header
        res = server.cli("artifact", "register", "m1", str(weights), "--no-record-copy", "-o", "json", check=True)
        artifact = json.loads(res.stdout)["id"]
        assert artifact == build_manifest(weights).artifact_id
        agent = AgentProc(base / "agent", unique("host-r"), server, dev=True)
        agent.config.write_text(agent.config.read_text().replace("min_size = 0", f"min_size = {THRESHOLD}"))
        server.cli("model", "policy", "m1", "--host", agent.name, "--path", str(agent.root / "authorized"),
                   check=True)
        agent.start()
        api = Api(server)
        yield Host(server, api, agent, weights, artifact)
    finally:
        if api is not None:
            api.close()
        if agent is not None:
            agent.stop()
        server.stop()


def plant(h: Host) -> None:
    """The authorized copy, then the attacker's renamed and planted ones."""
    root, w = h.agent.root, h.weights
    one, two = w / "model-00001.safetensors", w / "shards" / "model-00002.safetensors"
    shutil.copytree(w, root / "authorized")
    for rel, src in [("stash/renamed.bin", one), ("stash/notes.txt", two),
                     ("backup/model.safetensors.bak", two), ("deep/a/b/c/noext", two),
                     ("docs/readme.md", one)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    (root / "links").mkdir()
    os.link(root / "authorized" / "shards" / "model-00002.safetensors", root / "links" / "weights.txt")
    (root / "shortcut.bin").symlink_to(root / "authorized" / "model-00001.safetensors")


# (place, state, evidence it must carry)
EXPECTED = [
    ("stash", "present", ("2 files match", "renamed.bin holds model-00001.safetensors",
                          "notes.txt holds shards/model-00002.safetensors")),
    ("backup", "partial", ("partial: 1 of 2 files", "model.safetensors.bak holds shards/model-00002.safetensors")),
    ("deep/a/b/c", "partial", ("partial: 1 of 2 files", "noext holds shards/model-00002.safetensors")),
    ("docs", "partial", ("partial: 1 of 2 files", "readme.md holds model-00001.safetensors")),
    ("links", "partial", ("partial: 1 of 2 files", "weights.txt holds shards/model-00002.safetensors")),
]


def test_renamed_and_planted_copies_show_in_copies_and_alert(host: Host) -> None:
    plant(host)
    want = {host.at(place): state for place, state, _ in EXPECTED} | {host.at("authorized"): "present"}
    copies = wait_until(lambda: (c := host.copies()) and all(
        loc in c and c[loc]["state"] == state for loc, state in want.items()) and c,
        45, f"copies at {sorted(want)}")
    assert {loc for loc, c in copies.items() if c["state"] != "gone"} == set(want), "no other copy (the symlink)"
    assert copies[host.at("authorized")]["authorized"] is True
    assert all(copies[host.at(p)]["authorized"] is False for p, _, _ in EXPECTED)
    assert {c["artifact_id"] for c in copies.values()} == {host.artifact}

    # n of m and which names hold which files: in each copy's fields and evidence.
    counts = {c.location: (c.files_matched, c.files_total) for c in host.api.copies("m1")}
    for place, state, _ in EXPECTED:
        assert counts[host.at(place)] == ((2, 2) if state == "present" else (1, 2)), (place, counts[host.at(place)])
    evidence = {c.location: c.evidence for c in host.api.copies("m1")}
    for place, _state, says in EXPECTED:
        for s in says:
            assert s in evidence[host.at(place)], (place, evidence[host.at(place)])

    # Each one outside the policy alerts, as a copy at the manifest's paths does.
    alerts = wait_until(lambda: (a := host.alerts()) and all(
        any(f" at {host.agent.root / p} " in x["detail"] and x["detail"].startswith(
            "complete" if st == "present" else "partial") for x in a) for p, st, _ in EXPECTED) and a,
        30, "an unauthorized-copy alert for each planted copy")
    by_place = {p: [a for a in alerts if f" at {host.agent.root / p} " in a["detail"]] for p, _, _ in EXPECTED}
    for place, state, _ in EXPECTED:
        # While files are being planted a place may first alert as partial; its final state alerts too.
        assert by_place[place], place
        assert all(a["artifact_id"] == host.artifact and a["model"] == "m1" for a in by_place[place])
        assert all("found by content under other names" in a["detail"] for a in by_place[place])
        kind = "complete" if state == "present" else "partial"
        assert any(a["detail"].startswith(kind) for a in by_place[place]), by_place[place]
    assert not [a for a in alerts if f"{host.agent.root / 'authorized'} " in a["detail"]]


def test_moving_a_planted_copy_again_moves_its_record(host: Host) -> None:
    """The attacker renames the stash once more: the copy is where the bytes are now."""
    root = host.agent.root
    if not (root / "stash").exists():
        plant(host)
    (root / "stash").rename(root / "moved.d")
    (root / "moved.d" / "renamed.bin").rename(root / "moved.d" / "x")
    copies = wait_until(lambda: (c := host.copies()) and c.get(host.at("moved.d"), {}).get("state") == "present"
                        and c.get(host.at("stash"), {}).get("state") == "gone" and c,
                        45, "the stash copy gone and the moved one present")
    assert copies[host.at("moved.d")]["authorized"] is False


def test_big_files_that_match_nothing_alert_only_when_named_like_weights(host: Host) -> None:
    """Every file from the size threshold up is hashed now: an archive that matches nothing is no alert."""
    data = host.agent.root / "data"
    data.mkdir()
    (data / "archive.tar").write_bytes(os.urandom(2 * THRESHOLD))
    (data / "new.safetensors").write_bytes(os.urandom(2 * KiB))

    def unregistered() -> list[str]:
        res = host.server.cli("alerts", "--host", host.agent.name, "-o", "json", check=True)
        return [a["detail"] for a in json.loads(res.stdout) if a["rule"] == "unregistered-weights"]

    found = wait_until(lambda: [d for d in unregistered() if "new.safetensors" in d], 30,
                       "an unregistered-weights alert for new.safetensors")
    assert len(found) == 1
    # Hashed and reported (the inventory counts it), but no alert for the archive.
    wait_until(lambda: host.api.hosts()[host.agent.name].files >= 9, 30, "the archive in the host's report")
    assert not [d for d in unregistered() if "archive.tar" in d]


def test_partial_copies_go_stale_with_their_host(host: Host) -> None:
    """Last: the agent stops; its lease lapses; every copy it reported, partial or complete, is stale."""
    before = host.copies()
    live = {loc for loc, c in before.items() if c["state"] in ("present", "partial")}
    assert any(before[loc]["state"] == "partial" for loc in live)
    host.agent.stop()
    after = wait_until(lambda: (c := host.copies()) and all(c[loc]["state"] == "stale" for loc in live) and c,
                       30, "every copy of the stopped host stale")
    assert {after[loc]["state"] for loc in live} == {"stale"}
