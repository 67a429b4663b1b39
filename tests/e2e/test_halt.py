"""Local halts against real processes and real files: dry run, halt, refusal, lift, wiping."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from custos.agent.halt import HaltBlocks, Halter, ManifestCache
from custos.agent.scanner import FileRecord, ScanConfig, Scanner
from custos.agent.wipe import check_inside, wipe_tree
from custos.agent.workloads import Supervisor
from custos.errors import FailedPrecondition, InvalidInput
from custos.fs.hashing import build_manifest
from tests.e2e.conftest import make_weights

HOLD = """
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(120)
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def _halter(tmp_path: Path, records: list[FileRecord]) -> tuple[Halter, HaltBlocks, ManifestCache]:
    blocks = HaltBlocks(tmp_path / "halts.json")
    manifests = ManifestCache(tmp_path / "manifests")
    sup = Supervisor(name="h", state_dir=tmp_path / "state", plaintext_dir=tmp_path / "plain",
                     calls=None, blocks=blocks, manifests=manifests,  # type: ignore[arg-type]
                     refusal=lambda: None, open_blobs=lambda url: None)  # type: ignore[arg-type,return-value]
    return Halter(supervisor=sup, blocks=blocks, manifests=manifests, records=lambda: records,
                  grace_s=1.0), blocks, manifests


def test_dry_run_then_halt_then_lift(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    copy = make_weights(tmp_path / "copy", seed=5)
    manifest = build_manifest(copy)
    aid = manifest.artifact_id
    with Scanner(ScanConfig(roots=[copy], min_size=0), tmp_path / "cache.sqlite") as sc:
        records = list(sc.scan().records)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(copy / "model-00001.safetensors")],
                              stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], text=True)
    procs += [holder, bystander]
    assert holder.stdout is not None and holder.stdout.readline().strip() == "mapped"
    halter, blocks, manifests = _halter(tmp_path, records)
    manifests.put(aid, manifest)

    dry = halter.halt_local({aid}, reason="drill of a production model", dry_run=True)
    assert dry.dry_run
    assert any(w.startswith(f"stop pid {holder.pid} ") for w in dry.would_stop), dry.would_stop
    assert holder.poll() is None  # nothing stopped
    assert blocks.refusal(aid) is None  # nothing refused

    ev = halter.halt_local({aid}, reason="order 1234: halt m1")
    assert ev.pids_stopped == (holder.pid,)
    holder.wait(5)  # gone (stop_processes reaped it: its status went to the halt's evidence)
    assert bystander.poll() is None  # holds nothing of the scope
    # The copy the agent does not manage is reported, never deleted.
    assert any(r.startswith(f"{copy}: ") and "not managed by this agent" in r for r in ev.remaining), ev.remaining
    assert (copy / "model-00001.safetensors").exists()
    assert blocks.refusal(aid) == "order 1234: halt m1"
    assert HaltBlocks(tmp_path / "halts.json").refusal(aid) == "order 1234: halt m1"  # survives a restart
    ack = ev.to_ack(order_id="1234", verified=True, outcome="halted", received_unix_ns=1)
    assert list(ack.pids_stopped) == [holder.pid] and ack.outcome == "halted"

    halter.lift_local({aid})
    assert blocks.refusal(aid) is None
    assert HaltBlocks(tmp_path / "halts.json").refusal(aid) is None


def test_halt_of_an_unknown_artifact_says_what_it_could_not_check(tmp_path: Path) -> None:
    halter, blocks, _ = _halter(tmp_path, [])
    aid = "ab" * 32
    ev = halter.halt_local({aid}, reason="halt")
    assert ev.pids_stopped == ()
    assert any("manifest unknown to this agent" in r for r in ev.remaining)
    assert blocks.refusal(aid) == "halt"  # refused all the same


@pytest.mark.parametrize(("scope", "reason"), [
    ("ab" * 32, "one string is not a scope"),
    (set(), "empty scope"),
    ({"not-an-id"}, "bad id"),
    ({"ab" * 32}, ""),
])
def test_bad_halt_requests_change_nothing(tmp_path: Path, scope: object, reason: str) -> None:
    halter, blocks, _ = _halter(tmp_path, [])
    with pytest.raises(InvalidInput):
        halter.halt_local(scope, reason=reason)  # type: ignore[arg-type]
    assert blocks.snapshot() == {"all": None, "artifacts": {}}


def test_wipe_overwrites_and_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    run = tmp_path / "base" / "w-0123456789abcdef"
    (run / "artifact" / "sub").mkdir(parents=True)
    f = run / "artifact" / "sub" / "w.safetensors"
    f.write_bytes(os.urandom(3 << 20))
    (run / "artifact" / "link").symlink_to(outside)
    (run / "artifact" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    fd = os.open(f, os.O_RDONLY)  # see the bytes through an open descriptor after the unlink
    try:
        wiped, failures = wipe_tree(run)
        assert not failures
        assert str(f) in wiped and not run.exists()
        assert os.pread(fd, 1 << 20, 0) == bytes(1 << 20)  # overwritten with zeros before the unlink
    finally:
        os.close(fd)
    assert outside.read_bytes() == b"keep me"
    assert tmp_path.exists()


def test_wipes_are_confined_to_the_plaintext_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with pytest.raises(FailedPrecondition):
        check_inside(base, tmp_path / "elsewhere")
    with pytest.raises(FailedPrecondition):
        check_inside(base, base)
    (base / "escape").symlink_to(tmp_path)
    with pytest.raises(FailedPrecondition):
        check_inside(base, base / "escape")


def test_a_drill_never_reaches_bytes_another_artifact_holds(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """A drill artifact registered with production bytes (plus one of its own): a drill of it
    spares every process holding the shared bytes and stops only the drill's own; a real halt
    of the same artifact (the halt threshold) stops both."""
    prod = make_weights(tmp_path / "prod", seed=9)
    drill_dir = make_weights(tmp_path / "drill", seed=9)  # the same bytes...
    (drill_dir / "drill-only.safetensors").write_bytes(b"\x01" * 4096)  # ...plus one file of its own
    prod_m, drill_m = build_manifest(prod), build_manifest(drill_dir)
    assert prod_m.artifact_id != drill_m.artifact_id
    with Scanner(ScanConfig(roots=[prod, drill_dir], min_size=0), tmp_path / "cache.sqlite") as sc:
        records = list(sc.scan().records)
    shared = subprocess.Popen([sys.executable, "-c", HOLD, str(prod / "model-00001.safetensors")],
                              stdout=subprocess.PIPE, text=True)
    own = subprocess.Popen([sys.executable, "-c", HOLD, str(drill_dir / "drill-only.safetensors")],
                           stdout=subprocess.PIPE, text=True)
    procs += [shared, own]
    for p in (shared, own):
        assert p.stdout is not None and p.stdout.readline().strip() == "mapped"
    halter, _, manifests = _halter(tmp_path, records)
    manifests.put(prod_m.artifact_id, prod_m)
    manifests.put(drill_m.artifact_id, drill_m)

    ev = halter.halt_local({drill_m.artifact_id}, reason="drill 1234", drill=True)
    assert ev.pids_stopped == (own.pid,), ev
    assert shared.poll() is None  # production bytes: not the drill's to stop
    ev = halter.halt_local({drill_m.artifact_id}, reason="halt 5678")
    assert shared.pid in ev.pids_stopped  # a halt stops every holder of the scope's bytes
