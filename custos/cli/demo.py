"""`custos demo`: the tour on embedded defaults, ending in a real full shutdown.

Starts a dev server (a real `custos server --dev` process) and a dev host agent
(a real `custos agent run --dev`), generates safetensors weight files for a
covered base model and a fine-tuned derivative, pushes both encrypted, asks for
access as one person and approves it as another (the two-person rule), pulls
the base back verified, runs a supervised workload of the fine-tune on the
agent's host and, beside it, a stray process memory-mapping the pulled copy.
Then a drill on the drill model, and the 3-of-5 halt of the base model and
every derivative: the agent verifies the order itself, stops the workload and
the stray, wipes the workload's plaintext, and its ack is the evidence. The
report — verdict first (a pulled copy no agent manages stays: residual) —
and its time-to-halt plot are saved in a directory the demo prints and keeps.
Every step is a real CLI command against the real server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from custos.cli.output import Out
from custos.client.connection import parse_dev_env
from custos.errors import BackendUnavailable


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], bytes]]) -> None:
    """Write a valid safetensors file of F32 tensors (name -> (shape, raw bytes))."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "producer": "custos-demo"}}
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, data in tensors.values():
            f.write(data)


def generate_model(root: Path, seed: int, *, layers: int = 4, width: int = 256,
                   shards: int = 2) -> None:
    """A small transformer-shaped checkpoint: sharded safetensors plus a config."""
    rng = random.Random(seed)  # noqa: S311 - demo weights, not secrets
    per_shard = max(1, layers // shards)
    for s in range(shards):
        tensors = {}
        for layer in range(s * per_shard, min(layers, (s + 1) * per_shard)):
            for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
                tensors[f"model.layers.{layer}.self_attn.{part}.weight"] = (
                    [width, width], rng.randbytes(width * width * 4))
        write_safetensors(root / f"model-{s + 1:05d}-of-{shards:05d}.safetensors", tensors)
    (root / "config.json").write_text(json.dumps(
        {"architectures": ["DemoForCausalLM"], "hidden_size": width, "num_hidden_layers": layers}))


def _run(env: dict[str, str], *args: str, show: bool = True) -> str:
    cmd = [sys.executable, "-m", "custos.cli.main", *args]
    if show:
        print(f"\n$ custos {' '.join(shlex.quote(a) for a in args)}", flush=True)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(res.returncode)
    if show:
        print(res.stdout.rstrip(), flush=True)
    return res.stdout


HOLD = """
import mmap, os, sys, time
maps = []
root = sys.argv[1] if len(sys.argv) > 1 else os.environ["CUSTOS_ARTIFACT_DIR"]
for name in sorted(os.listdir(root)):
    if name.endswith(".safetensors"):
        with open(os.path.join(root, name), "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
print("mapped", len(maps), flush=True)
time.sleep(600)
"""


AGENT_CONFIG = """name = "{name}"
state_dir = "{state}"
socket = "{socket}"

[scan]
roots = ["{roots}"]
interval = 2
process_interval = 0.5
min_size = 0

[lease]
heartbeat_interval = 0.5

[workloads]
stop_grace = 2
plaintext_dir = "{plaintext}"
"""


def _wait(pred: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise BackendUnavailable(f"demo: timed out waiting for {what}")


def _stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _save_report(env: dict[str, str], order_id: str, out_dir: Path) -> dict[str, Any]:
    from custos.core.reports import order_report_html, time_to_halt_png, time_to_halt_svg

    data: dict[str, Any] = json.loads(_run(env, "order", "report", order_id, "-o", "json", show=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "halt-report.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    (out_dir / "halt-report.md").write_text(_run(env, "order", "report", order_id, show=False))
    (out_dir / "halt-report.html").write_text(order_report_html(data))
    (out_dir / "time-to-halt.svg").write_text(time_to_halt_svg(data))
    (out_dir / "time-to-halt.png").write_bytes(time_to_halt_png(data))
    return data


def run_demo(*, data_dir: Path | None, keep: bool, out: Any) -> int:
    own_tmp = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="custos-demo-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
    report_dir = Path(tempfile.mkdtemp(prefix="custos-demo-report-")) if own_tmp else root / "report"
    server_dir = root / "server"
    env_file = server_dir / "dev.env"
    if env_file.exists():
        env_file.unlink()
    print(f"Custos demo in {root} (embedded defaults: SQLite, local files, dev CA)", flush=True)
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "custos.cli.main", "server", "--dev", "--data-dir", str(server_dir),
         "--listen", "127.0.0.1:0", "--checkpoint-interval", "0.5"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    agent: subprocess.Popen[bytes] | None = None
    extra: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BackendUnavailable(f"dev server did not start; see {root / 'server.log'}")
            time.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
        env["CUSTOS_STATE_DIR"] = str(root / "state")
        env.update(parse_dev_env(env_file))
        print(f"dev server pid {proc.pid} at {env['CUSTOS_ADDR']}", flush=True)

        # A dev host agent: it scans the demo's copies, supervises workloads, verifies orders.
        host = "demo-gpu-1"
        agent_dir = root / "agent"
        (root / "pulled").mkdir(parents=True, exist_ok=True)
        agent_dir.mkdir(parents=True, exist_ok=True)
        socket = agent_dir / "agent.sock"
        (agent_dir / "agent.toml").write_text(AGENT_CONFIG.format(
            name=host, state=agent_dir / "state", socket=socket, roots=root / "pulled",
            plaintext=agent_dir / "plaintext"))
        agent_log = open(root / "agent.log", "ab")
        agent = subprocess.Popen(
            [sys.executable, "-m", "custos.cli.main", "agent", "run", "--dev", "--data-dir", str(server_dir),
             "--config", str(agent_dir / "agent.toml")], env=env, stdout=agent_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        env["CUSTOS_AGENT_SOCKET"] = str(socket)
        from custos.client.localagent import LocalClient

        def lease_live() -> bool:
            if agent is not None and agent.poll() is not None:
                raise BackendUnavailable(f"the dev agent exited; see {root / 'agent.log'}")
            try:
                return bool(socket.exists() and LocalClient(socket, timeout=5).status()["lease"]["state"] == "live")
            except Exception:  # noqa: BLE001 - not up yet
                return False

        _wait(lease_live, 30, "the dev agent's custody lease")
        print(f"dev agent {host} (pid {agent.pid}) holds a live custody lease", flush=True)

        base_dir, chat_dir = root / "weights" / "frontier-base", root / "weights" / "frontier-chat"
        generate_model(base_dir, seed=1)
        generate_model(chat_dir, seed=2)  # fine-tuned: same shapes, new weights
        _run(env, "model", "register", "frontier-base", "--training-flops", "3.2e26",
             "--owner", "research")
        out_json = _run(env, "push", "frontier-base", str(base_dir), "-o", "json", show=False)
        base_id = json.loads(out_json)["id"]
        print(f"\n$ custos push frontier-base {base_dir}\npushed artifact {base_id} "
              "(encrypted locally; only ciphertext in the blob store)")
        _run(env, "model", "register", "frontier-chat", "--training-flops", "3.2e26",
             "--owner", "applied")
        chat_id = json.loads(_run(env, "push", "frontier-chat", str(chat_dir), "--parent", base_id[:12],
                                  "--relation", "fine-tune", "-o", "json", show=False))["id"]
        print(f"\n$ custos push frontier-chat {chat_dir} --parent {base_id[:12]} --relation fine-tune\n"
              f"pushed artifact {chat_id} (a derivative of frontier-base)")
        # The two-person rule: nobody unwraps a covered model's keys alone. Ask as the
        # default dev identity (a person named sec1), approve as another (sec2).
        approve_key = str(server_dir / "approvers" / "sec2.key")
        asked = _run(env, "access", "request", "--model", "frontier-base", "--artifact", base_id[:12],
                     "--principal", "dev-security-team", "--for", "1h",
                     "--reason", "demo: restore the base model to check the backup")
        request_id = asked.split("request id ", 1)[1].split()[0]
        _run(env, "--identity", "sec2", "access", "approve", request_id[:16], "--key", approve_key)
        _run(env, "pull", base_id[:12], str(root / "pulled" / "frontier-base"))
        # The fine-tune runs on the agent's host under its own grant (the host may unwrap).
        asked = _run(env, "access", "request", "--model", "frontier-chat", "--artifact", chat_id[:12],
                     "--host", host, "--for", "1h", "--reason", "demo: serve the fine-tune on demo-gpu-1",
                     show=False)
        _run(env, "--identity", "sec2", "access", "approve", asked.split("request id ", 1)[1].split()[0][:16],
             "--key", approve_key, show=False)
        hold = root / "hold.py"
        hold.write_text(HOLD)
        run = json.loads(_run(env, "run", "--model", "frontier-chat", "--artifact", chat_id[:12], "--detach",
                              "-o", "json", "--", sys.executable, str(hold), show=False))
        workload_pid = int(run["pid"])
        print(f"\n$ custos run --model frontier-chat --detach -- python hold.py\n"
              f"supervised workload {run.get('workload_id', '?')} pid {workload_pid}: the agent unwrapped the key, "
              "decrypted into its private directory, and memory-maps the weights")
        stray = subprocess.Popen([sys.executable, str(hold), str(root / "pulled" / "frontier-base")],
                                 stdout=subprocess.PIPE, start_new_session=True)
        extra.append(stray)
        assert stray.stdout is not None
        stray.stdout.readline()
        print(f"a stray process (pid {stray.pid}) memory-maps the pulled copy of frontier-base", flush=True)

        def seen() -> bool:
            copies = json.loads(_run(env, "copies", "frontier-base", "-o", "json", show=False))["copies"]
            return any(c["location"] == f"{host}:{stray.pid}" for c in copies)

        _wait(seen, 30, "the agent to report the stray process as a loaded copy")
        _run(env, "model", "list")
        _run(env, "lineage", "frontier-base")
        _run(env, "copies", "frontier-base")

        # Shutdown: a drill on the designated drill model (2-of-5), then a real halt
        # of the base model and every derivative (3-of-5), each with its report. The
        # drill model is first declared drillable in the signed drill register (4-of-5,
        # the rotate threshold): a drill can stop nothing else.
        drill_dir = root / "weights" / "drill-model"
        generate_model(drill_dir, seed=3, layers=2, width=64, shards=1)
        _run(env, "model", "register", "drill-model", "--training-flops", "2e26", "--drill")
        _run(env, "push", "drill-model", str(drill_dir), show=False)
        signers = root / "server" / "signers"
        exec_env = {**env, "CUSTOS_ROLE": "executive"}
        _run(exec_env, "drill-register", "declare", "--model", "drill-model",
             *[a for i in (1, 2, 3, 4) for a in ("--key", str(signers / f"exec{i}.key"))])
        _run(exec_env, "drill", "--model", "drill-model", "--model", "frontier-base",
             "--reason", "quarterly shutdown drill", "--key", str(signers / "exec1.key"),
             "--key", str(signers / "exec2.key"))
        halted = json.loads(_run(exec_env, "drill", "--action", "halt", "--model", "frontier-base",
                                 "--reason", "demo: halt frontier-base and its derivatives",
                                 *[a for i in (1, 2, 3) for a in ("--key", str(signers / f"exec{i}.key"))],
                                 "-o", "json", show=False))
        order_id = halted["order"]["id"]
        print(f"\n$ custos drill --action halt --model frontier-base --key exec1.key --key exec2.key "
              f"--key exec3.key\nhalt order {order_id[:16]}: 3 of 5 executives signed; the agent verified "
              "the signatures itself and acted")
        data = _save_report(env, order_id, report_dir)
        md = (report_dir / "halt-report.md").read_text()
        print("\n$ custos order report " + order_id[:16] + "\n" + md.rstrip(), flush=True)
        for pid, what in ((workload_pid, "supervised workload"), (stray.pid, "stray process")):
            print(f"{what} pid {pid}: {'stopped' if _pid_gone(pid) else 'STILL RUNNING'}")
        wiped = [p for p in (agent_dir / "plaintext").rglob("*") if p.is_file()] \
            if (agent_dir / "plaintext").exists() else []
        print(f"plaintext left in the agent's private directory: {len(wiped)} file(s)")
        refused = subprocess.run([sys.executable, "-m", "custos.cli.main", "pull", base_id[:12],
                                  str(root / "pulled" / "after-halt")], env=env, capture_output=True, text=True,
                                 check=False)
        print(f"\n$ custos pull {base_id[:12]} ...   # after the halt\n{refused.stderr.strip()}")
        _run(env, "audit", "list")
        time.sleep(0.7)  # let the server sign a checkpoint over the newest event
        # The verifier's trusted state lives with the demo's data, not in the user's home.
        _run(env, "audit", "verify", "--state", str(root / "audit-state.json"))
        from custos.core.reports import verdict

        print(f"\nThe halt report and its time-to-halt plot are in {report_dir}:\n"
              "  halt-report.md  halt-report.html  halt-report.json  time-to-halt.svg  time-to-halt.png\n"
              f"verdict: {verdict(data)['text']}")
        if keep:
            print(f"\nThe dev server keeps running (pid {proc.pid}), and the agent (pid {agent.pid}). "
                  f"Point your shell at it:\n  source {env_file}\nStop them with: kill {proc.pid} {agent.pid}")
        else:
            print("\ndemo complete.")
        return 0
    finally:
        for p in extra:
            _stop_group(p)
        if not keep:
            _stop_group(agent)
            _stop_group(proc)
            if own_tmp:
                shutil.rmtree(root, ignore_errors=True)


def cmd_demo(ns: argparse.Namespace, out: Out) -> int:
    return run_demo(data_dir=Path(ns.data_dir) if ns.data_dir else None, keep=ns.keep, out=out)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("demo", parents=[common], help="five-minute demo on embedded defaults")
    d.add_argument("--data-dir", help="where to keep the demo's state (default: a temp dir)")
    d.add_argument("--keep", action="store_true", help="leave the dev server running")
    d.set_defaults(fn=cmd_demo)


