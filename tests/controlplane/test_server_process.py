"""The control plane as a real process: shutdown, config, generated code, demo, crash safety."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from custos.cli.demo import generate_model
from custos.core.canonical import decode_canonical
from tests import ROOT
from tests.servers.custos import CUSTOS, DevServer


def test_generated_code_is_up_to_date() -> None:
    res = subprocess.run([sys.executable, "-m", "custos.tools.genproto", "--check"],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr


def test_sigterm_graceful_shutdown_signs_final_checkpoint(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "d", extra=["--checkpoint-interval", "3600"]).start()
    srv.cli("model", "register", "m1", "--training-flops", "1", check=True)
    rc = srv.stop(signal.SIGTERM)
    assert rc == 0, srv.log()
    logs = [json.loads(ln) for ln in srv.log().splitlines() if ln.startswith("{")]
    assert any(r["msg"] == "control plane stopping" for r in logs)
    assert all(set(r) >= {"time", "level", "logger", "msg"} for r in logs)
    # Restart on the same data: the checkpoint written at shutdown covers event 1.
    srv.start()
    v = json.loads(srv.cli("audit", "verify", "-o", "json", check=True).stdout)
    assert v["ok"] and v["checkpoints"] == 1 and v["events_after_last_checkpoint"] == 0
    srv.stop()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('listen = "127.0.0.1:0"\n[store]\nurl = "sqlite:///x.db"\nbogus = 1\n')
    res = subprocess.run([*CUSTOS, "server", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 2 and "unknown key(s) ['bogus']" in res.stderr
    assert "Traceback" not in res.stderr
    cfg.write_text("listen = [\n")
    res = subprocess.run([*CUSTOS, "server", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_server_without_tls_material_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\n[store]\nurl = "sqlite://{tmp_path}/x.db"\n')
    res = subprocess.run([*CUSTOS, "server", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 2 and "CA certificate is not configured" in res.stderr


def test_server_with_unreachable_etcd_fails_fast(tmp_path: Path) -> None:
    from tests.servers.ports import free_port

    res = subprocess.run([*CUSTOS, "server", "--dev", "--data-dir", str(tmp_path),
                          "--listen", "127.0.0.1:0", "--store", f"etcd://127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 5 and "etcd" in res.stderr and "Traceback" not in res.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    res = subprocess.run([*CUSTOS, "demo", "--data-dir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[fine-tune]" in res.stdout
    assert "audit log OK" in res.stdout and "signed checkpoints" in res.stdout
    assert "frontier-chat" in res.stdout
    assert "# Drill report: drill drill-model" in res.stdout and "# Order report: halt frontier-base" in res.stdout
    assert "is halted: data keys are refused" in res.stdout
    assert "custos --identity sec2 access approve" in res.stdout and "1/1 counted; grant active until" in res.stdout
    # The real thing: a dev agent ran a supervised workload and a stray mapped a copy; the halt
    # stopped both, wiped the workload's plaintext, and the report says what remains.
    assert re.search(r"supervised workload pid \d+: stopped", res.stdout), res.stdout
    assert re.search(r"stray process pid \d+: stopped", res.stdout), res.stdout
    assert "plaintext left in the agent's private directory: 0 file(s)" in res.stdout
    assert "**incomplete — " in res.stdout and "residual cop" in res.stdout
    report = tmp_path / "demo" / "report"
    data = json.loads((report / "halt-report.json").read_text())
    [host] = [h for h in data["hosts"] if h["host"] == "demo-gpu-1"]
    assert host["outcome"] == "halted" and host["verified"] and len(host["pids_stopped"]) == 2
    assert host["seconds_to_halt"] > 0, "measured, not zero"
    assert any(c["state"] == "wiped" for c in data["copies"])
    assert (report / "time-to-halt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Time from quorum to halt" in (report / "time-to-halt.svg").read_text()
    assert "incomplete — " in (report / "halt-report.html").read_text()
    assert f"are in {report}" in res.stdout


@pytest.mark.slow
def test_kill_9_mid_registration_on_etcd_leaves_nothing_partial(tmp_path: Path, etcd_server) -> None:  # type: ignore[no-untyped-def]
    store = f"etcd://{etcd_server.endpoint}/crash-{int(time.time() * 1000)}"
    srv = DevServer(tmp_path / "d", store=store).start()
    srv.cli("model", "register", "crash", "--training-flops", "3e26", check=True)
    dirs = []
    for i in range(40):
        d = tmp_path / f"w{i}"
        generate_model(d, seed=100 + i, layers=2, width=16, shards=1)
        dirs.append(d)
    stop = threading.Event()
    done: list[str] = []

    def worker(chunk: list[Path]) -> None:
        parent = None
        for d in chunk:
            if stop.is_set():
                return
            args = ["artifact", "register", "crash", str(d), "-o", "json", "--timeout", "5"]
            if parent:
                args += ["--parent", parent, "--relation", "fine-tune"]
            res = srv.cli(*args)
            if res.returncode == 0:
                parent = json.loads(res.stdout)["id"]
                done.append(parent)

    threads = [threading.Thread(target=worker, args=(dirs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    while len(done) < 6:
        time.sleep(0.02)
    srv.kill9()
    stop.set()
    for t in threads:
        t.join()
    srv.start()
    try:
        _check_consistent(srv, etcd_server.endpoint, store.rsplit("/", 1)[1], done)
    finally:
        srv.stop()


def _check_consistent(srv: DevServer, endpoint: str, prefix: str, acknowledged: list[str]) -> None:
    import asyncio

    from custos.controlplane.store.etcd import EtcdStore

    async def read() -> dict[str, bytes]:
        s = EtcdStore(endpoint, prefix=f"/{prefix}/")
        try:
            return {e.key: e.value
                    for p in ("artifacts/", "model-artifacts/", "lineage/", "audit/", "copies/")
                    for e in await s.range(p)}
        finally:
            await s.close()

    kv = asyncio.run(read())
    artifacts = [k.split("/", 1)[1] for k in kv if k.startswith("artifacts/")]
    assert set(acknowledged) <= set(artifacts)  # every acknowledged registration survived
    events = [decode_canonical(v)["event"] for k, v in sorted(kv.items()) if k.startswith("audit/events/")]
    ok_objects = {e["object"] for e in events if e["action"] == "RegisterArtifact" and e["result"] == "ok"}
    for aid in artifacts:
        rec = decode_canonical(kv[f"artifacts/{aid}"])
        assert f"model-artifacts/crash/{aid}" in kv
        assert f"artifact/{aid}" in ok_objects  # its audit event landed with it
        assert any(k.startswith(f"copies/{aid}/") for k in kv)
        for parent in rec["parents"]:
            assert f"lineage/parents/{aid}/{parent}" in kv and f"lineage/children/{parent}/{aid}" in kv
    assert len(ok_objects) == len(artifacts)
    v = json.loads(srv.cli("audit", "verify", "-o", "json", check=True).stdout)
    assert v["ok"], v


def test_serve_is_all_or_keys(tmp_path: Path) -> None:
    from custos.controlplane.config import load_config
    from custos.errors import InvalidInput

    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nserve = "keys"\n')
    assert load_config(cfg).serve == "keys"
    cfg.write_text('[server]\nserve = "orders"\n')
    with pytest.raises(InvalidInput, match="serve must be one of all, keys"):
        load_config(cfg)
    res = subprocess.run([*CUSTOS, "server", "--serve", "bogus"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.parametrize(("value", "ok"), [("1", 1.0), ("2.5", 2.5), ("3600", 3600.0), ("0", None), ("0.5", None),
                                           ("3601", None), ("-4", None), ('"10"', None), ("true", None),
                                           ("nan", None), ("inf", None)])
def test_idle_connection_s_is_a_bounded_number(tmp_path: Path, value: str, ok: float | None) -> None:
    from custos.controlplane.config import load_config
    from custos.errors import InvalidInput

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\nidle_connection_s = {value}\n")
    if ok is None:
        with pytest.raises(InvalidInput, match=r"idle_connection_s must be a number of seconds, 1\.\.3600"):
            load_config(cfg)
    else:
        assert load_config(cfg).idle_connection_s == ok


def test_the_idle_close_leaves_a_storm_time_to_make_its_first_call() -> None:
    """The idle timer runs from a connection's set-up: in a 10,000-host reconnect storm the
    default of 10 s closed connections between their handshake and their first call, each came
    back for another handshake, and the storm never ended (the same storm with 3600: absorbed in
    23 s). The default leaves at least the agent's whole wait for a connection and its stream."""
    import custos.agent.stream as stream
    from custos.controlplane.config import ServerConfig

    assert ServerConfig().idle_connection_s >= stream.CONNECT_TIMEOUT + stream.FIRST_LEASE_TIMEOUT
