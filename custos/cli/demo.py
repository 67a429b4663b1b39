"""`custos demo`: the five-minute tour on embedded defaults.

Starts a dev server (a real `custos server --dev` process), generates
safetensors weight files for a covered base model and a fine-tuned
derivative, pushes both encrypted, asks for access to the base model's
weights as one person and approves it as another (the two-person rule),
pulls it back verified, and prints
lineage, copies and a passing audit verification — every step a real CLI
command against the real server.
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


def run_demo(*, data_dir: Path | None, keep: bool, out: Any) -> int:
    own_tmp = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="custos-demo-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
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
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BackendUnavailable(f"dev server did not start; see {root / 'server.log'}")
            time.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
        env["CUSTOS_STATE_DIR"] = str(root / "state")
        for line in env_file.read_text().splitlines():
            if line.startswith("export "):
                k, _, v = line[len("export "):].partition("=")
                env[k] = shlex.split(v)[0]
        print(f"dev server pid {proc.pid} at {env['CUSTOS_ADDR']}", flush=True)

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
        _run(env, "push", "frontier-chat", str(chat_dir), "--parent", base_id[:12],
             "--relation", "fine-tune")
        # The two-person rule: nobody unwraps a covered model's keys alone. Ask as the
        # default dev identity (a person named sec1), approve as another (sec2).
        asked = _run(env, "access", "request", "--model", "frontier-base", "--artifact", base_id[:12],
                     "--principal", "dev-security-team", "--for", "1h",
                     "--reason", "demo: restore the base model to check the backup")
        request_id = asked.split("request id ", 1)[1].split()[0]
        _run(env, "--identity", "sec2", "access", "approve", request_id[:16],
             "--key", str(server_dir / "approvers" / "sec2.key"))
        _run(env, "pull", base_id[:12], str(root / "pulled" / "frontier-base"))
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
             "--key", str(signers / "exec2.key"), "--png", str(root / "drill.png"))
        _run(exec_env, "drill", "--action", "halt", "--model", "frontier-base",
             "--reason", "demo: halt frontier-base and its derivatives",
             *[a for i in (1, 2, 3) for a in ("--key", str(signers / f"exec{i}.key"))])
        refused = subprocess.run([sys.executable, "-m", "custos.cli.main", "pull", base_id[:12],
                                  str(root / "pulled" / "after-halt")], env=env, capture_output=True, text=True,
                                 check=False)
        print(f"\n$ custos pull {base_id[:12]} ...   # after the halt\n{refused.stderr.strip()}")
        _run(env, "audit", "list")
        time.sleep(0.7)  # let the server sign a checkpoint over the newest event
        # The verifier's trusted state lives with the demo's data, not in the user's home.
        _run(env, "audit", "verify", "--state", str(root / "audit-state.json"))
        if keep:
            print(f"\nThe dev server keeps running (pid {proc.pid}). Point your shell at it:\n"
                  f"  source {env_file}\nStop it with: kill {proc.pid}")
        else:
            print("\ndemo complete.")
        return 0
    finally:
        if not keep:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
            if own_tmp:
                shutil.rmtree(root, ignore_errors=True)


def cmd_demo(ns: argparse.Namespace, out: Out) -> int:
    return run_demo(data_dir=Path(ns.data_dir) if ns.data_dir else None, keep=ns.keep, out=out)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("demo", parents=[common], help="five-minute demo on embedded defaults")
    d.add_argument("--data-dir", help="where to keep the demo's state (default: a temp dir)")
    d.add_argument("--keep", action="store_true", help="leave the dev server running")
    d.set_defaults(fn=cmd_demo)


