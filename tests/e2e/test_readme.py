"""The README's walkthrough runs as written: every command of its shell block, in order.

The block under "## Five-minute walkthrough" has two parts: "# Terminal 1" (the dev
server, run here in the background) and "# Terminal 2" (everything else, run as one
``bash -euo pipefail`` script in the same directory, with the installed ``custos`` on
PATH). Nothing is edited or skipped, so a step that breaks for a reader breaks here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def walkthrough() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Five-minute walkthrough", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the walkthrough is one shell block"
    first, second = blocks[0].split("# Terminal 2", 1)
    server = "\n".join(line for line in first.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return server, "# Terminal 2" + second


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    server_cmd, script = walkthrough()
    assert server_cmd.startswith("custos server --dev --data-dir ./custos-data"), server_cmd
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "home")  # the audit verifier's trusted state lands here, not in ours
    log = open(tmp_path / "server.out", "wb")
    server = subprocess.Popen(["bash", "-c", f"exec {server_cmd}"], cwd=tmp_path, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    shell: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "custos-data" / "dev.env").exists():
            assert server.poll() is None, (tmp_path / "server.out").read_text()
            assert time.monotonic() < deadline, "the dev server did not start"
            time.sleep(0.1)
        shell = subprocess.Popen(["bash", "-euo", "pipefail", "-x", "-c", script], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        out, _ = shell.communicate(timeout=600)
        text = out.decode(errors="replace")
        (tmp_path / "walkthrough.out").write_text(text)
        assert shell.returncode == 0, f"the walkthrough failed:\n{text[-6000:]}\n--- agent.log:\n" + \
            ((tmp_path / "agent.log").read_text()[-3000:] if (tmp_path / "agent.log").exists() else "")
        # What the reader is told happens, happened.
        assert "approvals:  1/1 counted" in text or "1/1 counted" in text
        assert "['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']" in text
        assert "# Drill report: drill drill-model" in text
        assert "# Order report: halt frontier-base" in text and "**incomplete — " in text
        assert "verdict: incomplete" in text
        assert "audit log OK" in text
        assert "incomplete — " in (tmp_path / "halt.html").read_text()
        assert "Time from quorum to halt" in (tmp_path / "halt.svg").read_text()
    finally:
        if shell is not None and shell.poll() is None:
            shell.kill()
        if shell is not None:
            _kill(shell)  # the background agent is in the script's process group
        _kill(server)
        log.close()
