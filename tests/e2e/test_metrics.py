"""The agent's Prometheus endpoint, scraped from a real agent process."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.e2e.conftest import AgentProc, make_weights, server_config, unique, wait_until
from tests.servers.custos import DevServer
from tests.servers.ports import free_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def scrape_when(port: int, needle: str) -> str | None:
    text = scrape(port)
    return text if needle in text else None


def test_agent_metrics(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "cp", extra=["--config", str(server_config(tmp_path / "cp.toml"))]).start()
    port = free_port()
    ag = AgentProc(tmp_path / "a", unique("gpu-m"), srv, scan_extra=f'[metrics]\nlisten = "127.0.0.1:{port}"')
    try:
        make_weights(ag.root / "w", seed=5)
        ag.enroll()
        ag.start()
        wait_until(ag.lease_live, 30, "a live lease")
        text = wait_until(lambda: scrape_when(port, "custos_agent_weight_files 3.0"), 30,
                          "the inventory in the metrics")
        assert f'custos_agent_lease{{host="{ag.name}",state="live"}} 1.0' in text
        assert "custos_agent_failed_closed 0.0" in text and "custos_agent_connected 1.0" in text
        # Kill the control plane: the lease lapses and the agent fails closed; the metrics say so.
        srv.kill9()
        text = wait_until(lambda: scrape_when(port, "custos_agent_failed_closed 1.0"), 30,
                          "fail-closed in the metrics")
        assert f'custos_agent_lease{{host="{ag.name}",state="live"}} 0.0' in text
    finally:
        ag.stop()
        srv.stop()
