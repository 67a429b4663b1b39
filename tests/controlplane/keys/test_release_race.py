"""A data key's release is linearized with the halt (promises 3 and 7).

The attack: ask for a data key just before the quorum signature lands, so the
state check passes while the model is active, and the key comes back after the
halt committed. Every test here holds the same line: a hand-out either returns
a key whose ``ok`` audit event sits in the chain at a point where the model was
active (before the halt's quorum event), or it is refused, audited as refused,
and every key the provider made for it is zeroized.

The Store is real (SQLite, etcd); the key provider is Custos's own dev
provider with a gate (``GatedKeys``) that holds a key after making it, so a
test can commit a halt exactly between the check and the release.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from custos.blobs.local import LocalBlobStore
from custos.client.transfer import Pusher, PushState
from custos.controlplane.audit import AuditLog, Caller, event_fields
from custos.controlplane.custody import Custody
from custos.controlplane.keys.base import DataKey
from custos.controlplane.keys.broker import KeyBroker
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.orders import OrdersService
from custos.controlplane.pki import CertificateAuthority
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Store
from custos.controlplane.store.etcd import EtcdStore
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.canonical import decode_canonical
from custos.core.hosts import cert_fingerprint
from custos.core.orders import Order
from custos.core.signers import encode_signatures
from custos.errors import CustosError
from custos.fs.hashing import build_manifest
from tests.core.order_cases import panel

SEC = Caller(principal="alice", role="security-team", host="10.0.0.2", request_id="setup")
EXEC = Caller(principal="exec", role="executive", host="10.0.0.3", request_id="setup")
PANEL = panel("ed25519")
MODEL = "frontier"
HOST = "gpu-1"


class GatedKeys(LocalKeyProvider):
    """The dev provider; while ``gated``, a key it made waits in the provider's thread
    until the test opens the gate. Every key it hands out is kept in ``handed``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, dev_only=True)
        self.gated = False
        self.proceed = threading.Event()
        self._entered: Callable[[], object] = lambda: None
        self.handed: list[bytearray] = []

    def arm(self) -> asyncio.Event:
        """Hold the next keys made; the event is set on the caller's loop when one is held."""
        loop, entered = asyncio.get_running_loop(), asyncio.Event()
        self.proceed = threading.Event()
        self._entered = lambda: loop.call_soon_threadsafe(entered.set)
        self.gated = True
        return entered

    def open(self) -> None:
        self.gated = False
        self.proceed.set()

    def _hold(self, key: bytearray) -> None:
        self.handed.append(key)
        if self.gated:
            self._entered()
            assert self.proceed.wait(60), "the test never opened the gate"

    def _unwrap(self, name: str, wrapped: str, context: bytes) -> bytearray:
        key = super()._unwrap(name, wrapped, context)
        self._hold(key)
        return key

    def _generate_data_key(self, name: str, context: bytes) -> DataKey:
        dk = super()._generate_data_key(name, context)
        self._hold(dk.plaintext)
        return dk


@dataclass
class Outcome:
    kind: str
    request_id: str
    key: bytearray | None = None
    error: CustosError | None = None


@dataclass
class Plane:
    """The control plane's parts in-process, on a real Store."""

    store: Store
    tmp: Path
    aid: str = ""  # the stored artifact, after setup()
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.audit = AuditLog(self.store, Ed25519PrivateKey.generate())
        self.registry = Registry(self.store, self.audit)
        self.custody = Custody(self.registry, ca=CertificateAuthority.create(), lease_ttl=3600)
        self.keys = GatedKeys(self.tmp / "keys" / "dev-keys.json")
        self.blobs = LocalBlobStore(self.tmp / "blobs")
        self.broker = KeyBroker(self.registry, self.keys, self.blobs, "file:///blobs", custody=self.custody)
        self.orders = OrdersService(self.registry, self.custody, keys=self.keys, blobs=self.blobs)
        self.agent: Caller | None = None

    async def setup(self) -> Plane:
        """Signer set, the model, one stored artifact and an enrolled host with a live lease."""
        await self.orders.install_bootstrap(PANEL.signer_set)
        await self.registry.register_model(SEC, name=MODEL, owner="research", training_flops=3e26)
        self.aid = await self.push(b"weights")
        self.agent = await self.enroll(HOST)
        return self

    def manifest(self, content: bytes) -> tuple[Path, bytes]:
        root = self.tmp / f"art-{next(self.counter)}"
        root.mkdir()
        (root / "model.safetensors").write_bytes(content)
        return root, build_manifest(root).encode()

    async def push(self, content: bytes) -> str:
        root, manifest = self.manifest(content)
        out = await self.broker.create_data_key(SEC, model=MODEL, manifest_bytes=manifest, parents=[])
        pusher = Pusher(blobs=self.blobs, data_key=out["data_key"], artifact_id=out["artifact_id"],
                        manifest=build_manifest(root), root=root, resumed=False,
                        state=PushState(self.tmp / "push-state" / f"{out['artifact_id']}.json"))
        try:
            await asyncio.to_thread(pusher.run)
        finally:
            out["data_key"][:] = bytes(32)
        await self.broker.register_stored(SEC, artifact_id=out["artifact_id"])
        return str(out["artifact_id"])

    async def enroll(self, name: str) -> Caller:
        _, token, _ = await self.custody.add_host(SEC, name=name, labels={})
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .sign(key, hashes.SHA256()))
        cert, _ = await self.custody.enroll(peer="10.0.9.9", name=name, token=token,
                                            csr_pem=csr.public_bytes(serialization.Encoding.PEM))
        await self.custody.renew_lease(name)
        return Caller(principal=name, role="agent", host="10.0.9.9", request_id="setup",
                      cert_sha256=cert_fingerprint(cert))

    # -- orders -----------------------------------------------------------------------

    async def propose(self, action: str) -> tuple[str, bytes]:
        d = await self.orders.propose(EXEC, action=action, models=[MODEL], reason="test",
                                      expires_seconds=3600, drill=False)
        order: Order = d["order"]
        return order.id, encode_signatures(PANEL.sign_order(order))

    async def attach(self, oid: str, sigs: bytes) -> None:
        """The quorum signature, then the order's effects (keys suspended or resumed)."""
        await self.orders.attach(EXEC, order_id=oid, signatures=sigs)
        await self.orders.effects.tasks[oid]

    async def order(self, action: str) -> None:
        await self.attach(*await self.propose(action))

    def close(self) -> None:
        for t in self.orders.effects.tasks.values():
            t.cancel()
        self.keys.close()


@pytest.fixture
async def plane(store: Store, tmp_path: Path) -> AsyncIterator[Plane]:
    p = await Plane(store, tmp_path).setup()
    yield p
    p.close()


# -- hand-outs: every path that gives out a data key ------------------------------------

KINDS = ("unwrap", "agent-unwrap", "resumed-push", "new-push")


@dataclass
class HandOut:
    kind: str
    call: Callable[[str], Coroutine[Any, Any, bytearray]]  # run under a request id
    upload: str = ""  # a push's uploads/ key: written only with a released key


async def prepare(p: Plane, kind: str) -> HandOut:
    """What ``kind`` calls (a resumed push is started here, its first key wiped)."""
    if kind in ("unwrap", "agent-unwrap"):
        base = SEC if kind == "unwrap" else p.agent
        assert base is not None

        async def unwrap(rid: str) -> bytearray:
            caller = Caller(base.principal, base.role, base.host, rid, base.cert_sha256)
            return (await p.broker.unwrap(caller, artifact=p.aid, purpose="run"))[1]
        return HandOut(kind, unwrap)

    root, manifest = p.manifest(f"push {next(p.counter)}".encode())
    if kind == "resumed-push":
        out = await p.broker.create_data_key(SEC, model=MODEL, manifest_bytes=manifest, parents=[])
        out["data_key"][:] = bytes(32)

    async def push(rid: str) -> bytearray:
        caller = Caller(SEC.principal, SEC.role, SEC.host, rid)
        out = await p.broker.create_data_key(caller, model=MODEL, manifest_bytes=manifest, parents=[])
        assert out["resumed"] == (kind == "resumed-push")
        key: bytearray = out["data_key"]
        return key
    return HandOut(kind, push, f"uploads/{build_manifest(root).artifact_id}")


async def run(h: HandOut, rid: str) -> Outcome:
    try:
        return Outcome(h.kind, rid, key=await h.call(rid))
    except CustosError as exc:
        return Outcome(h.kind, rid, error=exc)


# -- the invariant, read from the audit chain -------------------------------------------

async def check_linearized(p: Plane, outcomes: list[Outcome], handed_before: int = 0) -> None:
    """Every key returned was released (``ok`` event) while the model was active in the
    chain's order; every refusal is audited and left no key unzeroized. (A halted model's
    refusal is written just after its reply: ``flush`` waits for it.)"""
    await p.audit.flush()
    events = [event_fields(v) for v in await p.audit.stored_events()]
    by_rid: dict[str, list[dict[str, Any]]] = {}
    state, active_at = "active", {}
    for ev in events:
        by_rid.setdefault(ev["request_id"], []).append(ev)
        if ev["action"] == "AttachSignature" and ev["result"].startswith("quorum: executing "):
            order = Order.decode((await p.orders.get(ev["object"][len("order/"):]))["body"].encode())
            if MODEL in order.models:
                state = "active" if order.action == "lift" else "halted"
        active_at[ev["seq"]] = state == "active"
    for o in outcomes:
        mine = [e for e in by_rid.get(o.request_id, []) if e["action"] in ("UnwrapDataKey", "CreateDataKey")]
        ok = [e for e in mine if e["result"] == "ok" or e["result"].startswith("ok:")]
        if o.key is not None:
            assert len(ok) == 1, f"{o.kind}: a key left without exactly one release event: {mine}"
            assert active_at[ok[0]["seq"]], f"{o.kind}: key released after the halt (event {ok[0]['seq']})"
            assert any(o.key), f"{o.kind}: the key returned was zeroized"
        else:
            assert not ok, f"{o.kind} refused ({o.error!r}) but its release was recorded: {ok}"
            assert any(e["result"].startswith("error: ") for e in mine), f"{o.kind}: refusal not audited"
    returned = [o.key for o in outcomes if o.key is not None]
    for buf in p.keys.handed[handed_before:]:
        if not any(buf is k for k in returned):
            assert not any(buf), "a key the provider made for a refused hand-out was not zeroized"


# -- deterministic interleavings ---------------------------------------------------------

async def _halt_lift(p: Plane) -> None:
    await p.order("halt")
    await p.order("lift")


SHORT_LEASE_S = 2.0


async def _short_lease(p: Plane) -> None:
    p.custody.lease_ttl = SHORT_LEASE_S
    try:
        await p.custody.renew_lease(HOST)
    finally:
        p.custody.lease_ttl = 3600


async def _lapse(p: Plane) -> None:
    """Wait until the host's lease has expired; nothing in the Store changes."""
    entry = await p.store.get(f"leases/{HOST}")
    assert entry is not None
    expires_ns = int(decode_canonical(entry.value)["expires_ns"])
    await asyncio.sleep(max(0.0, (expires_ns - time.time_ns()) / 1e9) + 0.01)


TIMED = ("short-lease", "lapse")  # named cases only: "lapse" waits out a short lease
EVENTS: dict[str, Callable[[Plane], Awaitable[Any]]] = {
    "halt": lambda p: p.order("halt"),
    "halt-lift": _halt_lift,  # the model is active again, but its record moved
    "policy": lambda p: p.registry.set_custody_policy(SEC, name=MODEL, hosts=["gpu-*"], paths=[]),
    "renew": lambda p: p.custody.renew_lease(HOST),
    "revoke": lambda p: p.custody.revoke_leases([HOST]),
    "remove-host": lambda p: p.custody.remove_host(SEC, name=HOST),
    "short-lease": _short_lease,
    "lapse": _lapse,
}


@dataclass
class World:
    """What the events did, for the expected outcome."""

    model_active: bool = True
    model_moved: bool = False
    host_enrolled: bool = True
    lease_live: bool = True

    def apply(self, event: str) -> None:
        if event in ("halt", "halt-lift", "policy"):
            self.model_moved = True
            if event != "policy":
                self.model_active = event == "halt-lift"
        elif event == "renew":
            self.lease_live = self.lease_live or self.host_enrolled
        elif event in ("revoke", "lapse"):
            self.lease_live = False
        elif event == "remove-host":
            self.host_enrolled = self.lease_live = False

    def refusal(self, kind: str, *, at_release: bool) -> str | None:
        if kind == "agent-unwrap" and not self.host_enrolled:
            return "HostNotEnrolled"
        if kind == "agent-unwrap" and not self.lease_live:
            return "LeaseNotLive"
        if not self.model_active:
            return "ModelNotActive"
        if at_release and self.model_moved:
            return "ReleaseRaced"
        return None


async def apply(p: Plane, events: tuple[str, ...]) -> None:
    for ev in events:
        try:
            await EVENTS[ev](p)
        except CustosError:
            pass  # e.g. renewing a removed host's lease: refused, and World knows it


async def interleave(p: Plane, kind: str, before: tuple[str, ...], during: tuple[str, ...],
                     after: tuple[str, ...]) -> Outcome:
    """``before`` the check, ``during`` (the key made, not yet released), ``after`` the
    release; returns the outcome after checking it against the chain and ``World``."""
    h = await prepare(p, kind)
    world = World()
    await apply(p, before)
    for ev in before:
        world.apply(ev)
    expected = world.refusal(kind, at_release=False)
    handed = len(p.keys.handed)
    entered = p.keys.arm()
    task = asyncio.create_task(run(h, f"rid-{next(p.counter)}"))
    waiter = asyncio.create_task(entered.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if expected is None:
        assert entered.is_set(), f"{kind}: refused before the provider: {task.result().error!r}"
        world.model_moved = False  # the check read the model as it is now
        await apply(p, during)
        for ev in during:
            world.apply(ev)
        expected = world.refusal(kind, at_release=True)
    p.keys.open()
    outcome = await task
    await apply(p, after)
    got = None if outcome.error is None else type(outcome.error).__name__
    assert got == expected, f"{kind} {before}/{during}/{after}: {got} ({outcome.error}), want {expected}"
    await check_linearized(p, [outcome], handed)
    if kind == "new-push":
        written = await p.store.get(h.upload) is not None
        assert written == (outcome.key is not None), f"upload record written: {written}, key: {outcome.key}"
    return outcome


NAMED = [
    # (name, before the check, between check and release, after the release)
    ("check-halt-release", (), ("halt",), ()),
    ("halt-check", ("halt",), (), ()),
    ("check-release-halt", (), (), ("halt",)),
    ("check-halt-lift-release", (), ("halt-lift",), ()),
    ("check-policy-release", (), ("policy",), ()),
    ("halt-lift-check-release", ("halt-lift",), (), ()),
    ("check-renew-release", (), ("renew",), ()),
    ("check-revoke-release", (), ("revoke",), ()),
    ("check-remove-host-release", (), ("remove-host",), ()),
    ("revoke-check", ("revoke",), (), ()),
    ("check-lease-lapses-release", ("short-lease",), ("lapse",), ()),
]


@pytest.fixture(params=["sqlite", "etcd"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    """Makes fresh, empty Stores on one backend (etcd: a fresh key prefix each)."""
    made: list[Store] = []

    def make() -> Store:
        if request.param == "sqlite":
            s: Store = SQLiteStore(tmp_path / f"custos-{len(made)}.db")
        else:
            endpoint = request.getfixturevalue("etcd_server").endpoint
            s = EtcdStore(endpoint, prefix=f"/release-{uuid.uuid4().hex}/")
        made.append(s)
        return s
    yield make
    for s in made:
        await s.close()


Case = tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # name, kind, before, during, after


async def on_fresh_planes(make: Callable[[], Store], tmp: Path, cases: list[Case]) -> None:
    """Each case on its own control plane; every failing case is named."""
    failures = []
    for i, (name, kind, before, during, after) in enumerate(cases):
        p = await Plane(make(), tmp / f"case-{i}").setup()
        try:
            await interleave(p, kind, before, during, after)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
        finally:
            p.close()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", KINDS)
async def test_interleavings(stores: Callable[[], Store], tmp_path: Path, kind: str) -> None:
    """The named table, for each path that hands out a key (the lease lapsing: agents only)."""
    cases: list[Case] = [(name, kind, before, during, after) for name, before, during, after in NAMED
                         if kind == "agent-unwrap" or not set(TIMED) & {*before, *during, *after}]
    await on_fresh_planes(stores, tmp_path, cases)


def scenarios(seed: int, n: int) -> list[Case]:
    """``n`` random interleavings: up to two events in each slot."""
    rng = random.Random(seed)
    names = sorted(set(EVENTS) - set(TIMED))
    out = []
    for i in range(n):
        before, during, after = (tuple(rng.choices(names, k=rng.randint(0, 2))) for _ in range(3))
        out.append((f"seed {seed} #{i}", rng.choice(KINDS), before, during, after))
    return out


@pytest.mark.parametrize("seed", range(4))
async def test_random_interleavings(stores: Callable[[], Store], tmp_path: Path, seed: int) -> None:
    """Random interleavings, each checked against ``World`` and the chain."""
    await on_fresh_planes(stores, tmp_path, scenarios(seed, 6))


async def test_cancelled_hand_out_zeroizes_the_key(plane: Plane) -> None:
    """The RPC goes away while the provider is unwrapping: the key it returns is wiped."""
    h = await prepare(plane, "unwrap")
    entered = plane.keys.arm()
    task = asyncio.create_task(h.call("rid-cancel"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The provider's call outlives the cancelled request; let it return.
    threads = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "to_thread"]  # type: ignore[union-attr]
    plane.keys.open()
    await asyncio.gather(*threads)
    assert plane.keys.handed and not any(plane.keys.handed[-1]), "the key of a cancelled unwrap was left in memory"


# -- natural races: hand-outs and the quorum signature scheduled together ----------------

async def test_unwraps_racing_the_quorum(plane: Plane, store: Store) -> None:
    """Rounds of halt and lift; in each, four hand-outs and the halt's quorum signature
    start at random moments within about one quorum's duration. No key may come back
    whose release is recorded after the halt, on either backend."""
    rounds = 200 if store.kind == "sqlite" else 30
    rng = random.Random(9)
    outcomes: list[Outcome] = []
    calls = {kind: await prepare(plane, kind) for kind in ("unwrap", "agent-unwrap")}
    # Spread the starts over what a quorum takes on this backend (scheduling, not an assert).
    t0 = time.perf_counter()
    await plane.order("halt")
    spread = time.perf_counter() - t0
    await plane.order("lift")

    async def later(delay: float, coro: Awaitable[Any]) -> Any:
        await asyncio.sleep(delay)
        return await coro

    made = len(plane.keys.handed)
    for r in range(rounds):
        oid, sigs = await plane.propose("halt")
        hand_outs = [later(rng.uniform(0, spread), run(calls[k], f"race-{r}-{i}"))
                     for i, k in enumerate(rng.choices(sorted(calls), k=4))]
        results = await asyncio.gather(later(rng.uniform(0, spread / 2), plane.attach(oid, sigs)), *hand_outs)
        outcomes += results[1:]
        await plane.order("lift")
    await check_linearized(plane, outcomes)
    released = [o for o in outcomes if o.key is not None]
    # Refused at the release: the provider made a key for it, and it was wiped.
    raced = sum(not any(k) for k in plane.keys.handed[made:])
    print(f"{store.kind}: {len(outcomes)} hand-outs in {rounds} rounds: {len(released)} released, "
          f"{raced} refused at the release, {len(outcomes) - len(released) - raced} before a key was made")
    assert released and raced, "the race never reached the window between the check and the release"
    for o in released:
        assert o.key is not None
        o.key[:] = bytes(len(o.key))
