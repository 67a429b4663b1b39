"""A real agent against a compromised control plane, end to end.

A real control plane (`custos server --dev`) registers two production models P and
Q and a drill model D, declares D in the signed drill register, enrolls a real
agent (`custos agent run`) and runs one supervised workload of each; a real drill
of D (2 keys) and its lift (3 keys) execute through it, so the agent has executed
orders to replay. Then the real control plane stops and a fake one
(tests/servers/fakecp.py) takes its address with its TLS server key and CA: the
agent reconnects to it and trusts it, and the fake keeps its lease alive.

The fake sends what a compromised control plane can make — orders below the halt
threshold, drills that reach a production model, forged drill registers, replays,
expired orders, forged signer-set rotations, signatures moved between orders, any
one-byte tampering of a valid halt — and each is refused with its reason while
every workload keeps running, its plaintext stays, and nothing the agent keeps
(executed orders, drill register, pinned signer set, refusals) changes.

Then it shows the harness can fail: orders are valid by their signatures alone,
whoever delivers them, so valid orders from the fake do act — a drill of D stops
D only (P, in its unsigned dry-run list, is only reported), a 3-of-5 halt stops P
— and nothing the fake sends lifts that halt, nor any lift a destroy.

All tests share one agent (module scope) and run in file order: the later tests
end the workloads the earlier ones watch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.client.signerkeys import load_private_key
from custos.core.canonical import encode_canonical
from custos.core.drills import DRILL_REGISTER_NAMESPACE, DrillRegister
from custos.core.orders import ORDER_DOMAIN, ORDER_NAMESPACE, Order, order_id_of
from custos.core.signers import (
    DEV_THRESHOLDS,
    SIGNER_SET_DOMAIN,
    Signature,
    SignerKey,
    SignerSet,
    encode_signatures,
    sign_raw,
)
from custos.v1 import custody_pb2, orders_pb2, orders_pb2_grpc, registry_pb2
from tests.core.order_cases import Signer, make_signer, sign_set
from tests.e2e.conftest import AgentProc, make_weights, unique, wait_until
from tests.servers.custos import DevServer
from tests.servers.fakecp import FakeControlPlane

pytestmark = pytest.mark.slow

P, Q, D = "prod-model", "other-model", "drill-model"
LEASE_TTL = 20  # the switch to the fake never lapses a lease (the fake renews it on every heartbeat anyway)
HOLD = """
import mmap, os, time
with open(os.path.join(os.environ["CUSTOS_ARTIFACT_DIR"], "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
time.sleep(600)
"""
# Attackers: keys of their own, never in the signer set the agent pinned.
ATTACKERS = tuple(make_signer(f"attacker{i}", "raw") for i in range(1, 6))
GHOST = hashlib.sha256(b"an artifact this host never saw").hexdigest()


@dataclass
class Workload:
    pid: int
    artifact: str
    files: list[Path]

    def running(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def plaintext_present(self) -> bool:
        return bool(self.files) and all(f.is_file() for f in self.files)


@dataclass
class World:
    fake: FakeControlPlane
    agent: AgentProc
    keys: dict[int, Ed25519PrivateKey]  # exec1..exec5
    pinned: SignerSet
    p: Workload
    q: Workload
    d: Workload
    drill: tuple[bytes, list[Signature]]  # the executed drill of D: body and signatures
    lift: tuple[bytes, list[Signature]]  # the executed lift of D
    register: tuple[bytes, bytes]  # the real drill register: body, signature list
    highest: int  # the highest sequence the agent had executed when the fake took over
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def order(self, action: str, models: tuple[str, ...], artifacts: tuple[str, ...], **kw: Any) -> Order:
        """A fresh order, its sequence above everything executed (so a case fails for its own reason)."""
        fields: dict[str, Any] = {"action": action, "models": models, "artifacts": artifacts,
                                  "reason": f"fake control plane: {action}", "issued_at": int(time.time()) - 5,
                                  "sequence": self.highest + next(self._seq), "signer_set_version": 1}
        return Order.create(**(fields | kw))

    def halt_p(self, **kw: Any) -> Order:
        return self.order("halt", (P,), (self.p.artifact,), **kw)

    def sign(self, order: Order, *which: int) -> list[Signature]:
        return [order.sign(self.keys[i]) for i in which]

    def signed(self, body: bytes | Order, signatures: list[Signature], *, register: tuple[bytes, bytes] | None = None,
               chain: list[bytes] | None = None, signer_set: bytes | None = None,
               dry_run: tuple[str, ...] = ()) -> custody_pb2.SignedOrder:
        """A SignedOrder as a control plane delivers it (the pinned set unless told otherwise)."""
        reg_body, reg_sigs = register or (b"", b"")
        return custody_pb2.SignedOrder(
            body=body.encode() if isinstance(body, Order) else body,
            signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in signatures],
            signer_set=self.pinned.encode() if signer_set is None else signer_set, signer_chain=chain or [],
            drill_register=reg_body, drill_register_signatures=reg_sigs, dry_run_artifacts=list(dry_run))

    def deliver(self, msg: custody_pb2.SignedOrder) -> custody_pb2.OrderAck:
        return self.fake.deliver(self.agent.name, msg)

    def kept(self) -> dict[str, Any]:
        """What the agent keeps that an order could change: executed orders, drill register,
        signer set, refusals. (Its record of acks only grows with executions.)"""
        sd = self.agent.state_dir
        orders = json.loads((sd / "orders.json").read_text())
        trusted = sd / "trusted-signer-set.bin"
        return {"executed": orders["executed"], "destroyed": orders["destroyed"],
                "destroyed_artifacts": orders.get("destroyed_artifacts", []),
                "register": (sd / "drill-register.json").read_bytes(),
                "trusted": trusted.read_bytes() if trusted.exists() else None,
                "blocks": self.agent.status()["blocks"]}

    def untouched(self, before: dict[str, Any]) -> None:
        for w in (self.p, self.q, self.d):
            assert w.running(), f"workload {w.pid} stopped"
            assert w.plaintext_present(), f"the plaintext of workload {w.pid} went"
        status = self.agent.status()
        assert status["failed_closed"] is None and status["lease"]["state"] == "live", status["lease"]
        assert self.kept() == before


# -- the world: real server, real agent, then the fake ---------------------------------------


def _start_workload(ag: AgentProc, model: str, artifact: str, hold: Path) -> Workload:
    res = ag.run("--model", model, "--artifact", artifact, "--detach", "-o", "json", "--", sys.executable, str(hold))
    assert res.returncode == 0, res.stderr
    pid = int(json.loads(res.stdout)["pid"])

    def running() -> dict[str, Any] | None:
        return next((x for x in ag.status()["workloads"] if x["pid"] == pid and x["state"] == "running"), None)

    wl = wait_until(running, 30, f"the workload of {model} to run")
    return Workload(pid=pid, artifact=artifact, files=[f for f in Path(wl["artifact_dir"]).rglob("*") if f.is_file()])


def _acked(ag: AgentProc, oid: str) -> bool:
    path = ag.state_dir / "orders.json"
    return path.exists() and oid in json.loads(path.read_text()).get("acks", {})


def _executed(srv: DevServer, oid: str, *which: int) -> tuple[bytes, list[Signature]]:
    """The order's body as the real control plane holds it, and the signatures of dev keys
    ``which`` (Ed25519 is deterministic: the very signatures the executives attached)."""
    env = srv.env
    certs = Path(env["CUSTOS_CERT_DIR"])
    creds = grpc.ssl_channel_credentials(root_certificates=Path(env["CUSTOS_CA"]).read_bytes(),
                                         private_key=(certs / "executive.key").read_bytes(),
                                         certificate_chain=(certs / "executive.pem").read_bytes())
    with grpc.secure_channel(env["CUSTOS_ADDR"], creds) as channel:
        info = orders_pb2_grpc.OrdersStub(channel).GetOrder(orders_pb2.GetOrderRequest(order_id=oid), timeout=10)
    order = Order.decode(bytes(info.order.body))
    return order.encode(), [order.sign(load_private_key(srv.data_dir / "signers" / f"exec{i}.key", None))
                            for i in which]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("compromised-cp")
    cfg = tmp / "cp.toml"
    cfg.write_text(f"[custody]\nlease_ttl = {LEASE_TTL}\nsweep_interval = 0.5\n")
    srv = DevServer(tmp / "cp", extra=["--config", str(cfg)]).start()
    fake: FakeControlPlane | None = None
    ag: AgentProc | None = None
    try:
        arts = {}
        for seed, (model, *flags) in enumerate(((P,), (Q,), (D, "--drill")), start=1):
            srv.cli("model", "register", model, "--training-flops", "3e26", *flags, check=True)
            arts[model] = json.loads(srv.cli("push", model, str(make_weights(tmp / f"w{seed}", seed)), "-o", "json",
                                             check=True).stdout)["id"]
        srv.declare_drills(D)
        ag = AgentProc(tmp / "host", unique("gpu"), srv)
        ag.enroll()
        ag.start()
        wait_until(ag.lease_live, 30, "a live lease from the real control plane")
        for model in (P, Q, D):  # covered: runs need an access grant naming the host
            srv.grant(model, hosts=[ag.name], duration_s=4 * 3600)
        hold = tmp / "hold.py"
        hold.write_text(HOLD)
        p, q, first_d = (_start_workload(ag, m, arts[m], hold) for m in (P, Q, D))

        # One real drill of D (2 keys) and its lift (3 keys), executed and acked.
        drill = srv.propose("drill", D)
        srv.sign(drill, 1, 2)
        wait_until(lambda: _acked(ag, drill), 30, "the agent to ack the real drill")
        assert not first_d.running() and p.running() and q.running()
        lift = srv.propose("lift", D)
        srv.sign(lift, 1, 2, 3)
        wait_until(lambda: _acked(ag, lift), 30, "the agent to ack the real lift")
        d = _start_workload(ag, D, arts[D], hold)  # a replayed drill would stop this one
        executed = _executed(srv, drill, 1, 2), _executed(srv, lift, 1, 2, 3)
        sd = ag.state_dir
        reg = json.loads((sd / "drill-register.json").read_text())
        highest = json.loads(json.loads((sd / "orders.json").read_text())["executed"])["highest_sequence"]

        srv.stop()
        fake = FakeControlPlane.impersonating(srv.data_dir, srv.port, lease_ttl=LEASE_TTL).start()
        fake.wait_for_host(ag.name)
        status = ag.status()
        assert status["connections"] == 2 and status["failed_closed"] is None, status
        yield World(fake=fake, agent=ag, pinned=SignerSet.decode((sd / "identity" / "signer-set.bin").read_bytes()),
                    keys={i: load_private_key(srv.data_dir / "signers" / f"exec{i}.key", None) for i in range(1, 6)},
                    p=p, q=q, d=d, drill=executed[0], lift=executed[1],
                    register=(reg["body"].encode(), reg["signatures"].encode()), highest=highest)
    finally:
        if ag is not None:
            ag.stop()
        if fake is not None:
            fake.stop()
        srv.stop()


# -- what a compromised control plane can make ----------------------------------------------


def _by_attackers(order: Order, signers: tuple[Signer, ...] = ATTACKERS[:3]) -> list[Signature]:
    return [s.sign(order.signature_input(), ORDER_NAMESPACE) for s in signers]


def _register_declaring_p(w: World, sign: Callable[[bytes], list[Signature]]) -> tuple[bytes, bytes]:
    """Version 2 of the drill register, declaring P too, signed by whatever ``sign`` makes."""
    reg = DrillRegister(version=2, signer_set_version=1, models=(D, P),
                        artifacts=tuple(sorted((w.d.artifact, w.p.artifact))))
    return reg.encode(), encode_signatures(sign(reg.signature_input()))


def _drill_smuggling_p(w: World) -> Order:
    """A drill of D by name whose signed scope also carries P's artifact."""
    return w.order("drill", (D,), tuple(sorted((w.d.artifact, w.p.artifact))))


def _rotation(w: World, holders: list[SignerKey], attackers: list[Signer], real: tuple[int, ...] = ()
              ) -> tuple[SignerSet, list[bytes]]:
    """Signer-set version 2 after the pinned one, held by ``holders`` and signed by ``attackers``
    and the dev keys ``real``: one rotation-chain entry."""
    v2 = w.pinned.successor(holders, thresholds=DEV_THRESHOLDS)
    sigs = [*sign_set(attackers, v2), *(sign_raw(w.keys[i], SIGNER_SET_DOMAIN + v2.encode()) for i in real)]
    return v2, [encode_canonical({"set": v2.encode().decode(), "signatures": encode_signatures(sigs).decode()})]


def _forged_rotation(w: World) -> custody_pb2.SignedOrder:
    v2, chain = _rotation(w, [s.key for s in ATTACKERS], list(ATTACKERS))
    order = w.halt_p(signer_set_version=2)
    return w.signed(order, _by_attackers(order), chain=chain, signer_set=v2.encode())


def _rotation_below_rotate(w: World) -> custody_pb2.SignedOrder:
    """Three real executives (one short of the rotate threshold) share the set with two attackers."""
    real = [w.pinned.key_by_name(f"exec{i}") for i in (1, 2, 3)]
    v2, chain = _rotation(w, [k for k in real if k] + [s.key for s in ATTACKERS[:2]], list(ATTACKERS[:2]), (1, 2, 3))
    order = w.halt_p(signer_set_version=2)
    return w.signed(order, [*w.sign(order, 1), *_by_attackers(order, ATTACKERS[:2])], chain=chain,
                    signer_set=v2.encode())


def _their_set_in_the_field(w: World) -> custody_pb2.SignedOrder:
    """The attackers' own version-1 set in the SignedOrder's signer_set field (the agent keeps its own)."""
    theirs = SignerSet.bootstrap([s.key for s in ATTACKERS], thresholds=DEV_THRESHOLDS)
    order = w.halt_p()
    return w.signed(order, _by_attackers(order), signer_set=theirs.encode())


def _posing_as_exec3(w: World) -> custody_pb2.SignedOrder:
    order = w.halt_p()
    forged = Signature(key_id=w.sign(order, 3)[0].key_id, sig=_by_attackers(order)[0].sig)
    return w.signed(order, [*w.sign(order, 1, 2), forged])


def _non_canonical(w: World) -> custody_pb2.SignedOrder:
    """Three valid signatures over a non-canonical encoding of a halt of P."""
    body = json.dumps(w.halt_p().to_json(), indent=1).encode()
    return w.signed(body, [sign_raw(w.keys[i], ORDER_DOMAIN + body) for i in (1, 2, 3)])


class Case(NamedTuple):
    name: str
    build: Callable[[World], custody_pb2.SignedOrder]
    reason: str  # what the ack's reason must contain
    outcome: str = "refused"


def _plain(make: Callable[[World], Order], *which: int, real_register: bool = False
           ) -> Callable[[World], custody_pb2.SignedOrder]:
    """An order signed by dev keys ``which``, with the real drill register if asked."""
    def build(w: World) -> custody_pb2.SignedOrder:
        order = make(w)
        return w.signed(order, w.sign(order, *which), register=w.register if real_register else None)
    return build


def _with_register(sign: Callable[[World, bytes], list[Signature]]) -> Callable[[World], custody_pb2.SignedOrder]:
    """A drill smuggling P (2 keys) with a register declaring P signed by ``sign``."""
    def build(w: World) -> custody_pb2.SignedOrder:
        order = _drill_smuggling_p(w)
        return w.signed(order, w.sign(order, 1, 2), register=_register_declaring_p(w, lambda m: sign(w, m)))
    return build


CASES = [
    Case("halt-signed-by-2", _plain(World.halt_p, 1, 2), "threshold_not_met:"),
    Case("drill-smuggling-p-artifact", _plain(_drill_smuggling_p, 1, 2, real_register=True), "not_drill:"),
    Case("drill-of-p", _plain(lambda w: w.order("drill", (P,), (w.p.artifact,)), 1, 2, real_register=True),
         "not_drill:"),
    Case("drill-without-register", _plain(_drill_smuggling_p, 1, 2), "not_drill:"),
    Case("drill-register-declaring-p-signed-by-3",
         _with_register(lambda w, m: [sign_raw(w.keys[i], m) for i in (1, 2, 3)]), "not_drill:"),
    Case("drill-register-declaring-p-signed-by-4-outsiders",
         _with_register(lambda w, m: [s.sign(m, DRILL_REGISTER_NAMESPACE) for s in ATTACKERS[:4]]), "not_drill:"),
    Case("halt-of-d-and-p-signed-by-the-drill-quorum",
         _plain(lambda w: w.order("halt", (D, P), tuple(sorted((w.d.artifact, w.p.artifact)))), 1, 2,
                real_register=True), "threshold_not_met:"),
    Case("replayed-drill", lambda w: w.signed(w.drill[0], w.drill[1], register=w.register), "",
         outcome="already-executed"),
    Case("expired-halt", _plain(lambda w: w.halt_p(issued_at=int(time.time()) - 7200,
                                                   not_after=int(time.time()) - 3600), 1, 2, 3), "expired:"),
    Case("halt-issued-in-an-hour", _plain(lambda w: w.halt_p(issued_at=int(time.time()) + 3600), 1, 2, 3),
         "not_yet_valid:"),
    Case("forged-rotation-to-attackers", _forged_rotation, "signer-set rotation chain rejected"),
    Case("rotation-signed-below-rotate", _rotation_below_rotate, "signer-set rotation chain rejected"),
    Case("halt-for-signer-set-v2", _plain(lambda w: w.halt_p(signer_set_version=2), 1, 2, 3), "wrong_signer_set:"),
    Case("attackers-set-in-the-signer-set-field", _their_set_in_the_field, "threshold_not_met:"),
    Case("attacker-posing-as-exec3", _posing_as_exec3, "threshold_not_met:"),
    Case("signatures-moved-from-the-executed-lift", lambda w: w.signed(w.halt_p(), w.lift[1]), "threshold_not_met:"),
    Case("one-key-signing-thrice", _plain(World.halt_p, 1, 1, 1), "threshold_not_met:"),
    Case("non-canonical-body", _non_canonical, "non_canonical:"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_compromised_control_plane_stops_nothing(world: World, case: Case) -> None:
    before = world.kept()
    msg = case.build(world)
    ack = world.deliver(msg)
    assert ack.order_id == order_id_of(msg.body) and ack.outcome == case.outcome and case.reason in ack.reason, ack
    if case.outcome == "refused":
        assert not ack.verified and not ack.pids_stopped and not ack.would_stop, ack
    world.untouched(before)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(part=st.sampled_from(["body", "signature", "key_id"]), at=st.integers(0, 1 << 16), xor=st.integers(1, 255))
def test_any_one_byte_tampering_of_a_valid_halt_is_refused(world: World, part: str, at: int, xor: int) -> None:
    before = world.kept()
    order = world.halt_p()
    msg = world.signed(order, world.sign(order, 1, 2, 3))
    if part == "body":
        raw = bytearray(msg.body)
        raw[at % len(raw)] ^= xor
        msg.body = bytes(raw)
    else:
        sig = msg.signatures[at % 3]
        raw = bytearray(sig.signature if part == "signature" else sig.key_id.encode())
        raw[(at // 3) % len(raw)] ^= xor
        if part == "signature":
            sig.signature = bytes(raw)
        else:
            sig.key_id = raw.decode("latin-1")
    ack = world.deliver(msg)
    assert ack.outcome == "refused" and not ack.verified, ack
    world.untouched(before)


def test_valid_orders_from_the_fake_act_and_nothing_it_sends_undoes_them(world: World) -> None:
    """The harness can fail: a valid drill stops D only, a valid halt stops P; then no forged or
    stale lift ends P's halt, and not even all five keys lift a destroy."""
    drill = world.order("drill", (D,), (world.d.artifact,))
    ack = world.deliver(world.signed(drill, world.sign(drill, 4, 5), register=world.register,
                                     dry_run=(world.p.artifact,)))
    assert ack.order_id == drill.id and ack.verified and ack.outcome == "halted", ack
    assert world.d.pid in ack.pids_stopped and world.p.pid not in ack.pids_stopped, ack
    assert any(f"stop pid {world.p.pid} " in x for x in ack.would_stop), ack.would_stop
    wait_until(lambda: not world.d.running(), 15, "D's workload to stop")
    assert world.p.running() and world.p.plaintext_present() and world.q.running()

    halt = world.halt_p()
    ack = world.deliver(world.signed(halt, world.sign(halt, 1, 3, 5)))
    assert ack.order_id == halt.id and ack.verified and ack.outcome == "halted", ack
    assert world.p.pid in ack.pids_stopped, ack
    wait_until(lambda: not world.p.running(), 15, "P's workload to stop")
    assert not any(f.exists() for f in world.p.files), "P's plaintext was not wiped"
    assert world.q.running() and world.q.plaintext_present()

    def lift_p(**kw: Any) -> Order:
        return world.order("lift", (P,), (world.p.artifact,), **kw)

    withheld = lift_p(sequence=halt.sequence - 1)  # signed before the halt, held back, sent after it
    lifts = [("lift-signed-by-2", world.signed(o := lift_p(), world.sign(o, 1, 2)), "threshold_not_met:"),
             ("lift-as-drill-with-the-real-register",
              world.signed(o := lift_p(drill=True), world.sign(o, 1, 2), register=world.register),
              "threshold_not_met:"),
             ("lift-by-attackers", world.signed(o := lift_p(), _by_attackers(o)), "threshold_not_met:"),
             ("quorum-lift-withheld-since-before-the-halt", world.signed(withheld, world.sign(withheld, 1, 2, 3)),
              "stale_sequence:")]
    for label, msg, reason in lifts:
        ack = world.deliver(msg)
        assert ack.outcome == "refused" and reason in ack.reason, (label, ack)
        assert world.p.artifact in world.agent.status()["blocks"]["artifacts"], label

    destroy = world.order("destroy", (D,), (world.d.artifact,))
    ack = world.deliver(world.signed(destroy, world.sign(destroy, 1, 2, 3, 4)))
    assert ack.verified and ack.outcome == "destroyed", ack
    undo = world.order("lift", (D,), (world.d.artifact,))
    ack = world.deliver(world.signed(undo, world.sign(undo, 1, 2, 3, 4, 5)))
    assert ack.outcome == "refused" and "destroyed_model:" in ack.reason, ack
    assert world.d.artifact in world.agent.status()["blocks"]["artifacts"]
    assert world.agent.status()["failed_closed"] is None  # every stop above came from an order, not a lapse
    assert world.q.running()
    # The stream, manifests, and the supervisor following its runs' grants (every 10 s): nothing else.
    assert set(world.fake.calls) <= {"/custos.v1.Custody/Stream", "/custos.v1.Registry/GetArtifact",
                                     "/custos.v1.Access/Get"}, world.fake.calls


# -- a control plane that stalls or sends junk beside a valid order ------------------------------


def test_junk_in_the_unsigned_dry_run_list_cannot_spoil_a_valid_halts_ack(world: World) -> None:
    halt = world.order("halt", ("ghost-model",), (GHOST,))
    ack = world.deliver(world.signed(halt, world.sign(halt, 1, 2, 3), dry_run=("not-an-artifact-id",)))
    assert ack.order_id == halt.id and ack.verified and ack.outcome == "halted", ack


def test_a_stalling_control_plane_cannot_hold_a_valid_halt_back(world: World) -> None:
    asked: list[tuple[str, bool]] = []  # (artifact, was Q's workload still running when the agent asked?)

    def stall(req: registry_pb2.GetArtifactRequest, ctx: grpc.ServicerContext) -> registry_pb2.GetArtifactResponse:
        asked.append((req.id, world.q.running()))
        while ctx.is_active():  # answer nothing until the agent gives up
            time.sleep(0.05)
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "stalled")
        raise AssertionError("abort raises")

    world.fake.get_artifact = stall
    try:
        halt = world.order("halt", (Q,), (world.q.artifact,))
        ack = world.deliver(world.signed(halt, world.sign(halt, 1, 2, 3), dry_run=(GHOST,)))
    finally:
        world.fake.get_artifact = None
    assert ack.verified and ack.outcome == "halted" and world.q.pid in ack.pids_stopped, ack
    assert not any(running for _, running in asked), f"the agent waited on the control plane first: {asked}"
