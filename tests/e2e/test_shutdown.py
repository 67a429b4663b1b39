"""Full shutdown end to end, every part real: a control plane whose keys live in a
real OpenBao Transit, three agent processes each running a supervised workload
of the model or of its fine-tuned derivative, and a stray process memory-mapping
a plaintext copy. A 3-of-5 halt stops every workload and the stray process,
wipes the managed plaintext, makes pulls fail and leaves the Transit key
suspended; the report lists every copy; a quorum lift restores pulls; a 4-of-5
destroy makes the key and the ciphertext objects gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import psutil
import pytest

from custos.controlplane.keys.vault import VaultTransitProvider
from tests.e2e.conftest import AgentProc, make_weights, unique, wait_until
from tests.servers.custos import DevServer
from tests.servers.openbao import OpenBaoDevServer, find_bao

HOLD = """
import mmap, os, sys, time
d = os.environ.get("CUSTOS_ARTIFACT_DIR") or sys.argv[1]
with open(os.path.join(d, "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    if find_bao() is None:
        if os.environ.get("CI"):
            pytest.fail("OpenBao is required in CI", pytrace=False)
        pytest.skip("OpenBao not installed")
    server = OpenBaoDevServer(tmp_path_factory.mktemp("bao"), binary=find_bao())
    server.start()
    hvac.Client(url=server.address, token=server.root_token).sys.enable_secrets_engine("transit", path="transit")
    yield server
    server.stop()


def state(srv: DevServer, oid: str) -> str:
    return json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout)["state"]


def test_halt_lift_destroy_with_agents(tmp_path: Path, bao: OpenBaoDevServer) -> None:
    (tmp_path / "vault-token").write_text(bao.root_token)
    cfg = tmp_path / "cp.toml"
    cfg.write_text(f"""
[custody]
lease_ttl = 3
sweep_interval = 0.5
[keys]
provider = "vault"
url = "{bao.address}"
token_file = "{tmp_path / 'vault-token'}"
""")
    srv = DevServer(tmp_path / "cp", extra=["--config", str(cfg)]).start()
    agents: list[AgentProc] = []
    stray: subprocess.Popen[bytes] | None = None
    try:
        srv.cli("model", "register", "base", "--training-flops", "3e26", check=True)
        srv.cli("model", "register", "chat", "--training-flops", "3e26", check=True)
        base = json.loads(srv.cli("push", "base", str(make_weights(tmp_path / "wb", 1)), "-o", "json",
                                  check=True).stdout)
        chat = json.loads(srv.cli("push", "chat", str(make_weights(tmp_path / "wc", 2)), "--parent", base["id"],
                                  "--relation", "fine-tune", "-o", "json", check=True).stdout)
        hold = tmp_path / "hold.py"
        hold.write_text(HOLD)
        for letter in "abc":
            ag = AgentProc(tmp_path / letter, unique(f"gpu-{letter}"), srv)
            ag.enroll()
            agents.append(ag.start())
        for ag in agents:
            wait_until(ag.lease_live, 30, f"{ag.name} to hold a live lease")
        # Both models are covered: access grants for the runs (base on a and b, chat on c) and for
        # the security team's pulls.
        srv.grant("base", hosts=[agents[0].name, agents[1].name])
        srv.grant("chat", hosts=[agents[2].name])
        srv.grant("base")
        srv.grant("chat")

        # Supervised workloads: base on a and b, the fine-tune on c.
        workload_pids = []
        for ag, art in zip(agents, (base, base, chat), strict=True):
            res = ag.run("--model", "base" if art is base else "chat", "--artifact", art["id"], "--detach",
                         "-o", "json", "--", sys.executable, str(hold))
            assert res.returncode == 0, res.stderr
            workload_pids.append(int(json.loads(res.stdout)["pid"]))
        # A stray process on host a, memory-mapping a plaintext copy it made by hand.
        stray_dir = agents[0].root / "stray-copy"
        make_weights(tmp_path / "wb2", 1).rename(stray_dir)
        stray = subprocess.Popen([sys.executable, str(hold), str(stray_dir)], stdout=subprocess.PIPE)
        assert stray.stdout is not None and stray.stdout.readline().strip() == b"mapped"
        api_copies = lambda: json.loads(srv.cli("copies", "base", "-o", "json", check=True).stdout)["copies"]  # noqa: E731
        wait_until(lambda: any(c["location"] == f"{agents[0].name}:{stray.pid}" for c in api_copies()), 30,
                   "the stray process as a loaded copy")
        provider = VaultTransitProvider(url=bao.address, token=bao.root_token)
        assert not provider.state("base").suspended

        halt = srv.propose("halt", "base")
        assert srv.sign(halt, 1, 2)["state"] == "proposed"
        t_quorum = time.monotonic()
        srv.sign(halt, 3)
        wait_until(lambda: state(srv, halt) == "complete", 60, "the halt to complete")
        elapsed = time.monotonic() - t_quorum
        for pid in [*workload_pids, stray.pid]:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
        stray.wait(10)
        # Managed plaintext is wiped on every host.
        for ag in agents:
            left = [p for p in ag.plaintext.rglob("*") if p.is_file()] if ag.plaintext.exists() else []
            assert left == [], left
        refused = srv.cli("pull", base["id"], str(tmp_path / "after-halt"))
        assert refused.returncode == 6 and "halted" in refused.stderr
        assert srv.cli("pull", chat["id"], str(tmp_path / "after-halt-chat")).returncode == 6
        assert provider.state("base").suspended and provider.state("chat").suspended
        report = json.loads(srv.cli("order", "report", halt, "-o", "json", check=True).stdout)
        hosts = {h["host"]: h for h in report["hosts"]}
        for ag in agents:
            assert hosts[ag.name]["acked"] and hosts[ag.name]["verified"], hosts[ag.name]
            assert hosts[ag.name]["outcome"] == "halted"
        assert stray.pid in hosts[agents[0].name]["pids_stopped"]
        states = {(c["host"], c["location_kind"], c["state"]) for c in report["copies"]}
        assert ("object-store", "object-store", "key-suspended") in states
        by_loc = {c["location"]: c for c in report["copies"]}
        assert by_loc[f"{agents[0].name}:{stray.pid}"]["state"] == "stopped", by_loc[f"{agents[0].name}:{stray.pid}"]
        # The hand-made copy is not the agent's to delete: reported, with the reason.
        assert by_loc[f"{agents[0].name}:{stray_dir}"]["state"] == "residual"
        assert all(c["state"] in ("wiped", "stopped", "gone", "residual", "key-suspended")
                   for c in report["copies"]), report["copies"]
        md = srv.cli("order", "report", halt, check=True).stdout
        assert "p50" in md and agents[2].name in md
        print(f"halt: quorum -> complete {elapsed:.2f} s over 3 agents")

        lift = srv.propose("lift", "base")
        srv.sign(lift, 2, 4, 5)
        wait_until(lambda: state(srv, lift) == "complete", 60, "the lift to complete")
        # The halt revoked every grant on base (and its fine-tune); the lift does not restore them.
        refused = srv.cli("pull", base["id"], str(tmp_path / "after-lift-no-grant"))
        assert refused.returncode != 0 and "no active access grant" in refused.stderr, refused.stderr
        srv.grant("base")
        srv.grant("chat", hosts=[agents[2].name])
        srv.cli("pull", base["id"], str(tmp_path / "after-lift"), check=True)
        assert not provider.state("base").suspended
        # The agents run again once lifted.
        res = agents[2].run("--model", "chat", "--artifact", chat["id"], "--", sys.executable, "-c", "print('ok')")
        assert res.returncode == 0, res.stderr

        destroy = srv.propose("destroy", "chat")
        srv.sign(destroy, 1, 2, 3, 4)
        wait_until(lambda: state(srv, destroy) == "complete", 60, "the destroy to complete")
        assert not provider.state("chat").exists
        objects = srv.data_dir / "blobs" / "objects" / "artifacts" / chat["id"]
        assert not objects.exists() or not any(objects.iterdir())
        gone = srv.cli("pull", chat["id"], str(tmp_path / "after-destroy"))
        assert gone.returncode != 0 and not (tmp_path / "after-destroy").exists()
        provider.close()
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
        for ag in agents:
            ag.stop()
        srv.stop()
