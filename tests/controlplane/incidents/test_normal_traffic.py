"""Normal traffic raises nothing: a push and a pull with the real CLI, an agent's pull
within its model's custody policy and its inventory, leases renewed, a drill
ordered, executed and acked, an intact audit log. One test per rule."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from custos.core.rules import RULES
from tests.controlplane.access_helper import grant
from tests.controlplane.incidents.conftest import Plane, tree, weights

CUSTOS = [sys.executable, "-m", "custos.cli.main"]


@pytest.fixture(scope="module")
def normal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("normal")
    plane = Plane(tmp / "plane", rules={"unwrap_rate": {"window_s": 60, "max_per_host": 5, "max_per_principal": 5},
                                        "order_ack_missing": {"deadline_s": 60}}).start()
    try:
        plane.model("prod", hosts=["gpu-*"], paths=["/models/*"])
        plane.model("drill-target", drill=True)
        plane.declare_drills("drill-target")
        src = weights(tmp / "src", 11)
        env = plane.cli_env()

        def cli(*args: str) -> str:
            res = subprocess.run([*CUSTOS, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            return res.stdout

        aid = json.loads(cli("push", "prod", str(src), "-o", "json"))["id"]
        plane.run(grant(plane.cp.access, "prod", principal="dev-security-team"))  # the two-person rule
        cli("pull", aid, str(tmp / "pulled-by-security-team"))
        gpu = plane.enroll("gpu-1")
        plane.pull(gpu, aid, tmp / "pulled-by-agent")
        plane.report("gpu-1", tree(tmp / "pulled-by-agent", "/models/prod"))
        plane.connect("gpu-1")
        plane.round()
        oid = plane.order("drill", ["drill-target", "prod"], drill=True, signers=2)
        plane.ack("gpu-1", oid, "dry-run")
        assert plane.run(plane.cp.orders.get(oid))["state"] == "complete"
        plane.run(plane.cp.custody.renew_lease("gpu-1"))
        assert plane.run(plane.cp.custody.sweep()) == []
        plane.run(plane.cp.audit.checkpoint())
        plane.advance(1)  # an hour on: past every deadline a rule has
        plane.round()
        yield plane
    finally:
        plane.stop()


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"vault-foreign-access"}))
def test_rule_is_silent_on_normal_traffic(normal: Plane, rule: str) -> None:
    assert normal.alerts(rule) == []


def test_normal_traffic_opens_no_incident_and_was_seen(normal: Plane) -> None:
    assert normal.incidents(include_closed=True) == []
    actions = [e.action for e in normal.events()]
    # The traffic really happened and the engine read all of it.
    assert actions.count("UnwrapDataKey") == 2 and "CreateDataKey" in actions and "CompleteOrder" in actions
    _, cursor = normal.run(normal.rt.engine.cursor())
    assert cursor == {"seq": max(e.seq for e in normal.events()), "unwraps": {"ok": 2}}
