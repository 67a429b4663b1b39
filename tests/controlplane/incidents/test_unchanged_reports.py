"""An unchanged report is skipped — but never past a change to the host's copy records.

Ingestion skips a report identical to the host's last one (the fleet's steady state). The
attack on that shortcut: change what the control plane believes about a host's copies by
some other path — its lease lapses (on this replica or another), an order's ack says the
files were wiped when they were not, an operator edits a record — and let the agent go on
sending the very same report. The copy records must follow the report again: a copy still
on disk is present, not stale or wiped, whatever this replica's cache remembers.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from custos.controlplane import custody as custody_mod
from custos.controlplane.custody import Custody
from custos.controlplane.store.base import Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.fs.hashing import build_manifest
from custos.v1 import custody_pb2
from tests.controlplane.incidents.conftest import SEC, Plane, tree, weights

HOST = "gpu-1"


def _copies(plane: Plane) -> dict[str, dict[str, Any]]:
    return {c["location"]: c for c in (decode_canonical(e.value) for e in plane.run(plane.store.range("copies/")))
            if c["host"] == HOST}


@pytest.fixture
def reported(plane: Plane, tmp_path: Path) -> tuple[Plane, dict[str, bytes], str]:
    plane.model("prod", hosts=["gpu-*"], paths=["/models/*"])
    src = weights(tmp_path / "w", 3)
    plane.run(plane.cp.registry.register_artifact(
        SEC, model="prod", manifest_bytes=build_manifest(src).encode(), parents=[]))
    plane.enroll(HOST)
    files = tree(src, "/models/prod")
    plane.report(HOST, files)
    loc = f"{HOST}:/models/prod"
    assert _copies(plane)[loc]["state"] == "present"
    assert plane.report(HOST, files)["copies"] == -1  # the same report again: skipped
    return plane, files, loc


def test_a_lease_lapsed_on_another_replica_is_undone_by_the_same_report(
        reported: tuple[Plane, dict[str, bytes], str]) -> None:
    plane, files, loc = reported
    other = Custody(plane.cp.registry, ca=None, lease_ttl=30)  # a second replica on the same Store
    plane.run(plane.store.commit(Txn(puts={f"leases/{HOST}": encode_canonical(
        {"expires_ns": time.time_ns() - 1, "state": "live"})})))
    assert plane.run(other.sweep()) == [HOST]
    assert _copies(plane)[loc]["state"] == "stale"
    plane.report(HOST, files)  # this replica remembers the report; the Store moved on
    assert _copies(plane)[loc]["state"] == "present"


def test_a_wipe_the_report_contradicts_is_undone_once_the_halt_is_old(
        reported: tuple[Plane, dict[str, bytes], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An ack claims the copy wiped; the agent's next reports still list every file. Within
    STALE_REPORT_NS the halt's evidence stands (the report may predate it); after, the copy
    is back — even though each report is byte for byte the one before."""
    plane, files, loc = reported
    key = next(e.key for e in plane.run(plane.store.range("copies/"))
               if decode_canonical(e.value)["location"] == loc)
    rec = dict(decode_canonical(plane.run(plane.store.get(key)).value))
    rec.update(state="wiped", evidence="order 0123: plaintext at /models/prod wiped", final_at_ns=time.time_ns())
    plane.run(plane.store.commit(Txn(puts={key: encode_canonical(rec)})))
    plane.report(HOST, files)
    assert _copies(plane)[loc]["state"] == "wiped"  # a report from before the halt, perhaps
    monkeypatch.setattr(custody_mod, "STALE_REPORT_NS", 0)  # the halt is old now
    plane.report(HOST, files)
    assert _copies(plane)[loc]["state"] == "present"


def test_an_edited_record_is_rewritten_by_the_same_report(reported: tuple[Plane, dict[str, bytes], str]) -> None:
    plane, files, loc = reported
    key = next(e.key for e in plane.run(plane.store.range("copies/"))
               if decode_canonical(e.value)["location"] == loc)
    rec = dict(decode_canonical(plane.run(plane.store.get(key)).value))
    rec.update(state="gone", authorized=True)
    plane.run(plane.store.commit(Txn(puts={key: encode_canonical(rec)})))
    plane.report(HOST, files)
    assert _copies(plane)[loc]["state"] == "present"


def test_after_a_restart_the_same_report_rewrites_nothing(reported: tuple[Plane, dict[str, bytes], str]) -> None:
    """A restarted replica (no cache) reads the records and finds them as the report says:
    no copy or index write (a fleet reconnecting after a restart is reads, not a write storm)."""
    plane, files, _ = reported
    before = {e.key: e.mod_revision for e in plane.run(plane.store.range("copies/"))}
    fresh = Custody(plane.cp.registry, ca=None, lease_ttl=30)
    inv = plane_inventory(files)
    assert plane.run(fresh.ingest(HOST, inv))["copies"] >= 1
    after = {e.key: e.mod_revision for e in plane.run(plane.store.range("copies/"))}
    assert after == before
    # and what the fresh replica holds is a complete view: the next identical report is skipped
    assert plane.run(fresh.ingest(HOST, inv))["copies"] == -1


def plane_inventory(files: dict[str, bytes]) -> Any:
    return custody_pb2.Inventory(full=True, files=[
        custody_pb2.FileRecord(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest(), form="plaintext")
        for p, b in files.items()])
