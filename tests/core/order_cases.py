"""Deterministic signers, and the adversarial case tables for orders and signer sets.

The tables are data, so the same cases can run against ``verify_order`` here,
against the control plane's order API and against the agent's order handling:

- ``adversarial_cases()`` -> list[Case]: each builds the inputs of one order
  verification, ``Inputs(order_bytes, signatures, signer_set, state, now,
  destroyed_models)``, and names the reason code (``OrderReason``) it must be
  rejected with. ``also`` lists codes that legitimately come with it (a real
  replay is also a stale sequence); ``reported`` names the signature-report
  lists (``invalid``, ``unknown``, ``duplicates``) that must not be empty.
- ``rotation_cases()`` -> list[RotationCase]: a trusted signer set, proposed
  successor bytes and signatures, and the ``RotationReason`` to reject with.
- ``valid_cases()`` -> list[Case] (reason ``""``): inputs that must verify.

Every key is derived from a fixed label, and Ed25519 and RFC 6979 ECDSA are
deterministic, so every case (and the known-answer vectors) is reproducible.
FIDO security keys are simulated in software by ``sk_sign`` (the token's
signing rule from openssh PROTOCOL.u2f), and passkeys by ``webauthn_sign`` (an
authenticator's assertion as WebAuthn defines it), since no token is attached in
tests; the console's browser test signs with Chromium's virtual authenticator.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custos.core import sshsig, webauthn
from custos.core.canonical import encode_canonical
from custos.core.drills import DRILL_REGISTER_DOMAIN, DRILL_REGISTER_NAMESPACE, DrillRegister, verify_register
from custos.core.orders import (
    ORDER_ACTIONS,
    ORDER_DOMAIN,
    ORDER_NAMESPACE,
    ExecutedOrders,
    Order,
    OrderReason,
    OrderVerification,
    verify_order,
)
from custos.core.signers import (
    DEV_THRESHOLDS,
    SIGNER_SET_DOMAIN,
    SIGNER_SET_NAMESPACE,
    RotationReason,
    Signature,
    SignerKey,
    SignerSet,
    sign_raw,
    sign_ssh,
)
from custos.errors import CustosError

NOW = 1_700_000_000
ISSUED = NOW - 600
LIFETIME = 86_400
SEQUENCE = 10
MODELS = ("frontier-1", "frontier-1-ft")
ARTIFACTS = tuple(sorted(hashlib.sha256(f"artifact-{i}".encode()).hexdigest() for i in range(3)))
REASON = "Exfiltration suspected on gpu-17 — halt frontier-1 and every derivative"
PRIOR_ORDER_ID = hashlib.sha256(b"an order executed earlier").hexdigest()

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


# -- deterministic keys and signers ---------------------------------------------------


def ed25519_key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"custos test signer {label}".encode()).digest())


def p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    order_n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    digest = hashlib.sha256(f"custos test signer {label}".encode()).digest()
    return ec.derive_private_key(int.from_bytes(digest, "big") % (order_n - 1) + 1, ec.SECP256R1())


def sk_sign(
    private_key: PrivateKey,
    application: str,
    message: bytes,
    *,
    namespace: str,
    flags: int = sshsig.SK_USER_PRESENT,
    counter: int = 7,
    hash_algorithm: str = "sha512",
) -> str:
    """An SSHSIG signature as a FIDO token (``sk-`` key) makes it, simulated in software."""
    data = sshsig.sk_signed_data(application, flags, counter, sshsig.signed_data(namespace, hash_algorithm, message))
    if isinstance(private_key, Ed25519PrivateKey):
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        public = sshsig.SshPublicKey(sshsig.KEY_SK_ED25519, raw, application)
        return sshsig.assemble(
            public, namespace, hash_algorithm, sshsig.KEY_SK_ED25519, private_key.sign(data), flags, counter
        )
    point = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    public = sshsig.SshPublicKey(sshsig.KEY_SK_ECDSA_P256, point, application)
    der = private_key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    return sshsig.assemble(
        public, namespace, hash_algorithm, sshsig.KEY_SK_ECDSA_P256, sshsig.ecdsa_signature_value(der), flags, counter
    )


PASSKEY_RP_ID = "console.custos.test"
PASSKEY_ORIGIN = "https://console.custos.test:8443"


def webauthn_sign(
    private_key: PrivateKey,
    message: bytes,
    *,
    rp_id: str = PASSKEY_RP_ID,
    origin: str = PASSKEY_ORIGIN,
    flags: int = webauthn.FLAG_UP | webauthn.FLAG_UV,
    typ: str = "webauthn.get",
    challenge: bytes | None = None,
    counter: int = 7,
    cross_origin: bool | None = False,
    extensions: bytes = b"",
    client_extra: dict[str, Any] | None = None,
) -> str:
    """A WebAuthn assertion over ``message`` as a browser and an authenticator make it, in
    software (deterministic: Ed25519, or RFC 6979 ECDSA)."""
    client: dict[str, Any] = {"type": typ, "challenge": webauthn.b64url(
        webauthn.challenge_for(message) if challenge is None else challenge), "origin": origin}
    if cross_origin is not None:
        client["crossOrigin"] = cross_origin
    client.update(client_extra or {})
    client_json = json.dumps(client, separators=(",", ":")).encode()
    auth = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + counter.to_bytes(4, "big") + extensions
    signed = auth + hashlib.sha256(client_json).digest()
    if isinstance(private_key, Ed25519PrivateKey):
        sig = private_key.sign(signed)
    else:
        sig = private_key.sign(signed, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    return webauthn.Assertion(auth, client_json, sig).encode()


def passkey_params(name: str, algorithm: str, *, uv: bool = True) -> webauthn.WebAuthnParams:
    return webauthn.WebAuthnParams(
        alg=webauthn.COSE_EDDSA if algorithm == "ed25519" else webauthn.COSE_ES256, rp_id=PASSKEY_RP_ID,
        origins=(PASSKEY_ORIGIN,), user_verification=uv, credential_id=hashlib.sha256(name.encode()).digest())


@dataclass(frozen=True)
class Signer:
    """One executive: a key and the way they sign (``raw``, ``ssh``, ``sk`` or ``webauthn``)."""

    name: str
    mode: str
    private_key: PrivateKey
    key: SignerKey

    def sign(self, message: bytes, namespace: str) -> Signature:
        if self.mode == "raw":
            assert isinstance(self.private_key, Ed25519PrivateKey)
            return sign_raw(self.private_key, message)
        if self.mode == "ssh":
            return sign_ssh(self.private_key, message, namespace=namespace)
        if self.mode == "webauthn":
            return Signature(self.key.key_id, webauthn_sign(self.private_key, message))
        return Signature(self.key.key_id, sk_sign(self.private_key, "ssh:", message, namespace=namespace))


def make_signer(name: str, mode: str, algorithm: str = "ed25519") -> Signer:
    private: PrivateKey = ed25519_key(name) if algorithm == "ed25519" else p256_key(name)
    if isinstance(private, Ed25519PrivateKey):
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keytype = "sk-ed25519" if mode == "sk" else "ed25519"
    else:
        raw = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        keytype = "sk-ecdsa-p256" if mode == "sk" else "ecdsa-p256"
    if mode == "webauthn":
        key = SignerKey.from_webauthn(passkey_params(name, algorithm, uv=not name.endswith("-no-uv")), raw, name=name)
    else:
        key = SignerKey(name=name, keytype=keytype, public=raw, application="ssh:" if mode == "sk" else None)
    return Signer(name=name, mode=mode, private_key=private, key=key)


@dataclass(frozen=True)
class Panel:
    """A signer set and the signers holding its keys, in signing order."""

    name: str
    signers: tuple[Signer, ...]
    signer_set: SignerSet

    def threshold(self, action: str) -> int:
        return self.signer_set.threshold(action)

    def sign(self, message: bytes, count: int, *, namespace: str = ORDER_NAMESPACE) -> tuple[Signature, ...]:
        return tuple(s.sign(message, namespace) for s in self.signers[:count])

    def sign_order(self, order: Order | bytes, count: int | None = None) -> tuple[Signature, ...]:
        body = order.encode() if isinstance(order, Order) else order
        action = order.action if isinstance(order, Order) else json.loads(body)["action"]
        n = self.threshold(action) if count is None else count
        return self.sign(ORDER_DOMAIN + body, n)


# exec1..exec5, all raw Ed25519.
ED25519_SIGNERS = tuple(make_signer(f"exec{i}", "raw") for i in range(1, 6))
# exec1 raw Ed25519, exec2 ssh-ed25519, exec3 an Ed25519 FIDO token, exec4
# ecdsa-sha2-nistp256, exec5 a P-256 FIDO token.
MIXED_SIGNERS = (
    make_signer("m-exec1", "raw"),
    make_signer("m-exec2", "ssh"),
    make_signer("m-exec3", "sk"),
    make_signer("m-exec4", "ssh", "p256"),
    make_signer("m-exec5", "sk", "p256"),
)
# Passkeys first (a halt's threshold is met by passkeys alone): pk-exec1 an ES256 passkey
# requiring UV, pk-exec2 an Ed25519 passkey not requiring it, pk-exec3 an ES256 passkey,
# then pk-exec4 raw Ed25519 and pk-exec5 ecdsa-sha2-nistp256.
PASSKEY_SIGNERS = (
    make_signer("pk-exec1", "webauthn", "p256"),
    make_signer("pk-exec2-no-uv", "webauthn"),
    make_signer("pk-exec3", "webauthn", "p256"),
    make_signer("pk-exec4", "raw"),
    make_signer("pk-exec5", "ssh", "p256"),
)
OUTSIDER = make_signer("outsider", "raw")
OUTSIDER_SSH = make_signer("outsider-ssh", "ssh")
# Successor keys: version 2 keeps the last two executives and adds three.
NEW_SIGNERS = (make_signer("new6", "raw"), make_signer("new7", "ssh"), make_signer("new8", "sk", "p256"))


@cache
def panel(name: str) -> Panel:
    """``ed25519``, ``mixed`` or ``passkey``: version 1 with DEV_THRESHOLDS."""
    signers = {"ed25519": ED25519_SIGNERS, "mixed": MIXED_SIGNERS, "passkey": PASSKEY_SIGNERS}[name]
    return Panel(name, signers, SignerSet.bootstrap([s.key for s in signers], thresholds=DEV_THRESHOLDS))


@cache
def panel_v2(name: str) -> Panel:
    """Version 2 of ``panel(name)``: the two last executives plus NEW_SIGNERS (rotate 4 of 5)."""
    v1 = panel(name)
    signers = v1.signers[3:] + NEW_SIGNERS
    return Panel(name + "-v2", signers, v1.signer_set.successor([s.key for s in signers]))


PANELS = ("ed25519", "mixed", "passkey")


def make_order(action: str, panel_name: str = "ed25519", **changes: Any) -> Order:
    fields: dict[str, Any] = {
        "action": action,
        "models": MODELS,
        "artifacts": ARTIFACTS,
        "reason": REASON,
        "issued_at": ISSUED,
        "not_after": ISSUED + LIFETIME,
        "nonce": hashlib.sha256(f"nonce {action} {panel_name}".encode()).hexdigest()[:32],
        "sequence": SEQUENCE,
        "signer_set_version": 1,
        "drill": action == "drill",
    }
    fields.update(changes)
    return Order(**fields)


def default_state() -> ExecutedOrders:
    return ExecutedOrders(highest_sequence=SEQUENCE - 1, executed_ids=frozenset({PRIOR_ORDER_ID}))


# -- order cases ----------------------------------------------------------------------


class Inputs(NamedTuple):
    order_bytes: bytes
    signatures: tuple[Signature, ...]
    signer_set: SignerSet
    state: ExecutedOrders
    now: int
    destroyed_models: frozenset[str]
    # The signed drill register delivered with the order (b"" = none).
    register_bytes: bytes = b""
    register_signatures: tuple[Signature, ...] = ()
    destroyed_artifacts: frozenset[str] = frozenset()


def make_register(p: Panel, *, models: Sequence[str] = MODELS, artifacts: Sequence[str] = ARTIFACTS,
                  version: int = 1, signer_set_version: int | None = None,
                  signers: int | None = None) -> tuple[bytes, tuple[Signature, ...]]:
    """A drill register declaring ``models`` and ``artifacts``, signed by the rotate
    threshold of ``p`` (or by ``signers`` of its signers)."""
    register = DrillRegister(version=version, models=tuple(models), artifacts=tuple(artifacts),
                             signer_set_version=p.signer_set.version if signer_set_version is None
                             else signer_set_version)
    n = p.threshold("rotate") if signers is None else signers
    return register.encode(), p.sign(register.signature_input(), n, namespace=DRILL_REGISTER_NAMESPACE)


def trusted_register(i: Inputs) -> DrillRegister | None:
    """The register the inputs deliver, if it verifies against their signer set (as the
    control plane and the agent check it before use); None otherwise."""
    if not i.register_bytes:
        return None
    try:
        return verify_register(i.register_bytes, i.register_signatures, i.signer_set)
    except CustosError:
        return None


def verify_inputs(i: Inputs) -> OrderVerification:
    """``verify_order`` over one case's inputs, its register checked first."""
    return verify_order(i.order_bytes, i.signatures, i.signer_set, now=i.now, state=i.state,
                        destroyed_models=i.destroyed_models, destroyed_artifacts=i.destroyed_artifacts,
                        drill_register=trusted_register(i))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Inputs]
    reason: str  # "" for a valid case
    also: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()


def inputs(
    body: bytes,
    signatures: Sequence[Signature],
    p: Panel,
    *,
    state: ExecutedOrders | None = None,
    now: int = NOW,
    destroyed: frozenset[str] = frozenset(),
    register: tuple[bytes, tuple[Signature, ...]] | None = None,
    destroyed_artifacts: frozenset[str] = frozenset(),
) -> Inputs:
    """The inputs of one verification; by default with a drill register that declares the
    whole test scope (MODELS, ARTIFACTS) drill, so a drill's own rules are what is tested."""
    reg_bytes, reg_sigs = make_register(p) if register is None else register
    return Inputs(body, tuple(signatures), p.signer_set, default_state() if state is None else state, now, destroyed,
                  reg_bytes, reg_sigs, destroyed_artifacts)


def _other_drill_flag(action: str, current: bool) -> bool:
    if action == "drill":
        return True
    if action in ("halt", "destroy"):
        return False
    return current


def _armor_mutate(armored: str, how: str) -> str:
    blob = sshsig.dearmor(armored)
    if how == "bitflip":
        return sshsig.armor(blob[:-1] + bytes([blob[-1] ^ 0x01]))
    if how == "truncated":
        return armored[: len(armored) // 2]
    if how == "no-armor":
        return base64.b64encode(blob).decode()
    if how == "bad-base64":
        lines = armored.splitlines()
        return "\n".join([lines[0], "!!!!" + lines[1][4:], *lines[2:]])
    raise AssertionError(how)


def _garbage(sig: Signature, variant: str) -> Signature:
    """A broken version of one valid signature."""
    text = sig.sig
    if webauthn.is_webauthn_sig(text):
        return _webauthn_garbage(sig, variant)
    armored = text.startswith(sshsig.ARMOR_BEGIN)
    if variant == "empty":
        return replace(sig, sig="")
    if variant == "truncated":
        return replace(sig, sig=_armor_mutate(text, "truncated") if armored else text[:-2])
    if variant == "uppercase":
        return replace(sig, sig=text.upper())
    if variant == "not-hex":
        return replace(sig, sig="zz" * 64)
    if variant == "zeros":
        return replace(sig, sig="00" * 64)
    if variant == "trailing-garbage":
        return replace(sig, sig=text + "00")
    if variant == "bitflip":
        if armored:
            return replace(sig, sig=_armor_mutate(text, "bitflip"))
        raw = bytearray.fromhex(text)
        raw[10] ^= 0x40
        return replace(sig, sig=raw.hex())
    if variant == "no-armor":
        return replace(
            sig, sig=_armor_mutate(text, "no-armor") if armored else base64.b64encode(bytes.fromhex(text)).decode()
        )
    if variant == "bad-base64":
        return replace(
            sig,
            sig=_armor_mutate(text, "bad-base64")
            if armored
            else "-----BEGIN SSH SIGNATURE-----\n!!\n-----END SSH SIGNATURE-----\n",
        )
    if variant == "random-bytes":
        return replace(sig, sig=hashlib.sha512(text.encode()).hexdigest())
    raise AssertionError(variant)


def _webauthn_garbage(sig: Signature, variant: str) -> Signature:
    a = webauthn.Assertion.decode(sig.sig)
    if variant == "bitflip":
        return replace(sig, sig=replace(a, signature=a.signature[:-1] + bytes([a.signature[-1] ^ 0x01])).encode())
    if variant == "no-armor":  # the parts without the prefix
        return replace(sig, sig=sig.sig[len(webauthn.SIG_PREFIX):])
    if variant == "bad-base64":
        return replace(sig, sig=webauthn.SIG_PREFIX + "!!." + sig.sig.split(".", 3)[3])
    if variant == "truncated":
        return replace(sig, sig=sig.sig[: len(sig.sig) // 2])
    if variant == "trailing-garbage":
        return replace(sig, sig=sig.sig + ".AA")
    if variant in ("uppercase", "empty", "not-hex", "zeros", "random-bytes"):
        return replace(sig, sig={"uppercase": sig.sig.upper(), "empty": "", "not-hex": "zz" * 64,
                                 "zeros": "00" * 64,
                                 "random-bytes": hashlib.sha512(sig.sig.encode()).hexdigest()}[variant])
    raise AssertionError(variant)


GARBAGE_VARIANTS = (
    "empty", "truncated", "uppercase", "not-hex", "zeros", "trailing-garbage", "bitflip", "no-armor", "bad-base64",
    "random-bytes",
)  # fmt: skip


def _compact(obj: Any) -> bytes:
    """Compact, key-sorted JSON — canonical except for list order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sign_sshsig(signer: Signer, message: bytes, namespace: str) -> Signature:
    """An SSHSIG signature by ``signer`` whatever its usual mode."""
    if signer.mode == "sk":
        return signer.sign(message, namespace)
    return sign_ssh(signer.private_key, message, namespace=namespace)


def _order_cases_for(p_name: str, action: str) -> list[Case]:
    p = panel(p_name)
    t = p.threshold(action)
    base = make_order(action, p_name)
    body = base.encode()
    sigs = p.sign_order(base)
    tag = f"{p_name}/{action}"
    T, INV, UNK, DUP = OrderReason.THRESHOLD_NOT_MET, ("invalid",), ("unknown",), ("duplicates",)
    cases: list[Case] = []

    def add(
        name: str, build: Callable[[], Inputs], reason: str, also: tuple[str, ...] = (), reported: tuple[str, ...] = ()
    ) -> None:
        cases.append(Case(f"{name}/{tag}", build, str(reason), tuple(str(a) for a in also), reported))

    def edited(**changes: Any) -> Callable[[], Inputs]:
        # The attacker edits the body after it was signed and keeps the signatures.
        return lambda: inputs(replace(base, **changes).encode(), sigs, p)

    # Too few signers, for every count below the action's threshold.
    for k in range(t):
        add(f"below-threshold-{k}-of-{t}", partial(inputs, body, sigs[:k], p), T)

    # Forged: the last needed signer's signature replaced by something else.
    last = p.signers[t - 1]
    other_body = replace(base, nonce="f" * 32).encode()
    add(
        "forged-random",
        lambda: inputs(body, (*sigs[: t - 1], _garbage(sigs[t - 1], "random-bytes")), p),
        T,
        reported=INV,
    )
    add(
        "forged-outsider-claims-id",
        lambda: inputs(
            body,
            (*sigs[: t - 1], replace(OUTSIDER.sign(ORDER_DOMAIN + body, ORDER_NAMESPACE), key_id=last.key.key_id)),
            p,
        ),
        T,
        reported=INV,
    )
    add(
        "forged-sig-from-other-order",
        lambda: inputs(body, (*sigs[: t - 1], last.sign(ORDER_DOMAIN + other_body, ORDER_NAMESPACE)), p),
        T,
        reported=INV,
    )

    # Signers not in the set.
    add(
        "not-in-set-outsider",
        lambda: inputs(body, (*sigs[: t - 1], OUTSIDER.sign(ORDER_DOMAIN + body, ORDER_NAMESPACE)), p),
        T,
        reported=UNK,
    )
    add(
        "not-in-set-ssh-outsider",
        lambda: inputs(body, (*sigs[: t - 1], OUTSIDER_SSH.sign(ORDER_DOMAIN + body, ORDER_NAMESPACE)), p),
        T,
        reported=UNK,
    )
    add(
        "not-in-set-next-version-key",
        lambda: inputs(body, (*sigs[: t - 1], NEW_SIGNERS[0].sign(ORDER_DOMAIN + body, ORDER_NAMESPACE)), p),
        T,
        reported=UNK,
    )

    # One key counted twice.
    add("counted-twice-same-sig", lambda: inputs(body, (*sigs[: t - 1], sigs[0]), p), T, reported=DUP)
    add("counted-twice-all-same", lambda: inputs(body, (sigs[0],) * t, p), T, reported=DUP)
    # The first signer's key is plain Ed25519: it signs once raw and once with SSHSIG.
    twice = _sign_sshsig(p.signers[0], ORDER_DOMAIN + body, ORDER_NAMESPACE)
    add("counted-twice-two-formats", lambda: inputs(body, (*sigs[: t - 1], twice), p), T, reported=DUP)

    # Time window.
    for label, now in (("at", base.not_after), ("after", base.not_after + 1), ("day-after", base.not_after + 86_400)):
        add(f"expired-{label}", partial(inputs, body, sigs, p, now=now), OrderReason.EXPIRED)
    for label, now in (("61s", base.issued_at - 61), ("1h", base.issued_at - 3600)):
        add(f"not-yet-valid-{label}", partial(inputs, body, sigs, p, now=now), OrderReason.NOT_YET_VALID)

    # Replay.
    executed = ExecutedOrders(highest_sequence=SEQUENCE, executed_ids=frozenset({PRIOR_ORDER_ID, base.id}))
    add(
        "replayed",
        lambda: inputs(body, sigs, p, state=executed),
        OrderReason.REPLAYED,
        also=(OrderReason.STALE_SEQUENCE,),
    )
    id_only = ExecutedOrders(highest_sequence=SEQUENCE - 1, executed_ids=frozenset({base.id}))
    add("replayed-id-only", lambda: inputs(body, sigs, p, state=id_only), OrderReason.REPLAYED)
    for label, seq in (("same", SEQUENCE), ("lower", SEQUENCE - 5)):
        fresh = replace(base, nonce="a" * 32, sequence=seq)
        fresh_sigs = p.sign_order(fresh)
        add(
            f"new-nonce-old-sequence-{label}",
            partial(inputs, fresh.encode(), fresh_sigs, p, state=executed),
            OrderReason.STALE_SEQUENCE,
        )

    # Signer-set version.
    future = replace(base, signer_set_version=2)
    future_sigs = p.sign_order(future)
    add("wrong-signer-set-future", lambda: inputs(future.encode(), future_sigs, p), OrderReason.WRONG_SIGNER_SET)
    # Signed for version 1 by holders of version-2 keys; the agent already trusts version 2.
    v2 = panel_v2(p_name)
    v2_sigs = tuple(s.sign(ORDER_DOMAIN + body, ORDER_NAMESPACE) for s in v2.signers[: v2.threshold(action)])
    add(
        "wrong-signer-set-past",
        lambda: Inputs(body, v2_sigs, v2.signer_set, default_state(), NOW, frozenset(), *make_register(v2)),
        OrderReason.WRONG_SIGNER_SET,
    )

    # Edited after signing (a drill's scope grown past the drill register is also not a drill).
    grown = (OrderReason.NOT_DRILL,) if action == "drill" else ()
    add("scope-models-added", edited(models=(*MODELS, "frontier-2")), T, grown, reported=INV)
    add("scope-models-removed", edited(models=MODELS[:1]), T, reported=INV)
    add("scope-models-renamed", edited(models=(MODELS[0], "decoy")), T, grown, reported=INV)
    add("scope-artifacts-added", edited(artifacts=(*ARTIFACTS, "e" * 64)), T, grown, reported=INV)
    add("scope-artifacts-removed", edited(artifacts=ARTIFACTS[1:]), T, reported=INV)
    add("scope-artifacts-replaced", edited(artifacts=("0" * 64, *ARTIFACTS[1:])), T, grown, reported=INV)
    for other in ORDER_ACTIONS:
        if other != action:
            add(
                f"action-edited-to-{other}",
                edited(action=other, drill=_other_drill_flag(other, base.drill)),
                T,
                reported=INV,
            )
    if action == "lift":
        add("drill-flag-flipped", edited(drill=not base.drill), T, reported=INV)
        drill_lift = replace(base, drill=True)
        drill_lift_sigs = p.sign_order(drill_lift)
        add(
            "drill-flag-cleared",
            lambda: inputs(replace(drill_lift, drill=False).encode(), drill_lift_sigs, p),
            T,
            reported=INV,
        )
    else:
        # drill must be true for a drill and false for halt/destroy: the flipped body is malformed.
        flipped = dict(base.to_json(), drill=not base.drill)
        add("drill-flag-flipped", lambda: inputs(encode_canonical(flipped), sigs, p), OrderReason.MALFORMED)
    add("expiry-extended-1h", edited(not_after=base.not_after + 3600), T, reported=INV)
    add("expiry-extended-to-max", edited(not_after=base.issued_at + 7 * 86_400), T, reported=INV)
    beyond = dict(base.to_json(), not_after=base.issued_at + 7 * 86_400 + 1)
    add("expiry-extended-beyond-max", lambda: inputs(encode_canonical(beyond), sigs, p), OrderReason.MALFORMED)
    add("reason-edited", edited(reason=REASON + "!"), T, reported=INV)
    add("nonce-edited", edited(nonce="0" * 32), T, reported=INV)
    add("issued-at-edited", edited(issued_at=base.issued_at + 1), T, reported=INV)
    add("sequence-bumped", edited(sequence=SEQUENCE + 100), T, reported=INV)

    # Signed over the wrong bytes.
    add("no-domain-prefix", lambda: inputs(body, p.sign(body, t), p), T, reported=INV)
    add("signer-set-domain", lambda: inputs(body, p.sign(SIGNER_SET_DOMAIN + body, t), p), T, reported=INV)
    for label, namespace in (("file", "file"), ("signer-set", SIGNER_SET_NAMESPACE)):
        # Every signer signs with SSHSIG (raw keys too), in the wrong namespace.
        wrong_ns = tuple(_sign_sshsig(s, ORDER_DOMAIN + body, namespace) for s in p.signers[:t])
        add(f"wrong-ssh-namespace-{label}", partial(inputs, body, wrong_ns, p), T, reported=INV)

    # Truncated or garbage signatures (the last needed signer's).
    for variant in GARBAGE_VARIANTS:
        if variant == "random-bytes":
            continue  # covered by forged-random
        add(
            f"garbage-sig-{variant}",
            partial(inputs, body, (*sigs[: t - 1], _garbage(sigs[t - 1], variant)), p),
            T,
            reported=INV,
        )

    # Non-canonical bodies, signed as they are: only their form is wrong.
    obj = base.to_json()
    unsorted_models = dict(obj, scope={"artifacts": list(ARTIFACTS), "models": list(reversed(MODELS))})
    unsorted_artifacts = dict(obj, scope={"artifacts": list(reversed(ARTIFACTS)), "models": list(MODELS)})
    non_canonical = {
        "spaces": json.dumps(obj, sort_keys=True, ensure_ascii=False).encode(),
        "unsorted-keys": json.dumps(dict(reversed(obj.items())), separators=(",", ":"), ensure_ascii=False).encode(),
        "pretty": json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False).encode(),
        "escaped-unicode": json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(),
        "trailing-newline": body + b"\n",
        "unsorted-models": _compact(unsorted_models),
        "unsorted-artifacts": _compact(unsorted_artifacts),
        "duplicate-key": body[:-1] + b',"action":"' + action.encode() + b'"}',
    }  # fmt: skip
    for variant, nc_body in non_canonical.items():
        assert nc_body != body
        add(
            f"non-canonical-{variant}",
            partial(inputs, nc_body, p.sign(ORDER_DOMAIN + nc_body, t), p),
            OrderReason.NON_CANONICAL,
        )
    return cases


def _malformed_bodies() -> dict[str, bytes]:
    """Bodies that are not orders at all, or break a field rule (valid JSON, canonical)."""
    obj = make_order("halt").to_json()
    body = encode_canonical(obj)

    def with_(**changes: Any) -> bytes:
        return encode_canonical(dict(obj, **changes))

    def scope(models: list[str] | None = None, artifacts: list[str] | None = None) -> bytes:
        return with_(
            scope={
                "artifacts": list(ARTIFACTS) if artifacts is None else artifacts,
                "models": list(MODELS) if models is None else models,
            }
        )

    missing = dict(obj)
    del missing["nonce"]
    return {
        "not-json": b"halt frontier-1 now",
        "empty": b"",
        "truncated-json": body[: len(body) // 2],
        "utf8-bom": b"\xef\xbb\xbf" + body,
        "invalid-utf8": body.replace(b"\xe2\x80\x94", b"\xe2\x80"),
        "float-number": body.replace(b'"issued_at":%d' % ISSUED, b'"issued_at":%d.0' % ISSUED),
        "exponent-number": body.replace(b'"sequence":%d' % SEQUENCE, b'"sequence":1e1'),
        "nested-too-deep": b"[" * 100_000 + b"]" * 100_000,
        "lone-surrogate": body.replace(b"\xe2\x80\x94", b"\\ud800"),
        "a-list": b"[]",
        "missing-field": encode_canonical(missing),
        "extra-field": with_(priority="high"),
        "unknown-action": with_(action="shutdown"),
        "action-rotate": with_(action="rotate"),
        "encoding-2": with_(encoding=2),
        "sequence-0": with_(sequence=0),
        "sequence-bool": with_(sequence=True),
        "sequence-string": with_(sequence="10"),
        "negative-issued-at": with_(issued_at=-1, not_after=100),
        "not-after-equal-issued": with_(not_after=ISSUED),
        "not-after-before-issued": with_(not_after=ISSUED - 1),
        "signer-set-version-0": with_(signer_set_version=0),
        "nonce-short": with_(nonce="ab" * 8),
        "nonce-uppercase": with_(nonce="AB" * 16),
        "drill-as-int": with_(drill=0),
        "empty-models": scope(models=[]),
        "bad-model-name": scope(models=["Frontier 1"]),
        "duplicate-model": scope(models=[MODELS[0], MODELS[0]]),
        "bad-artifact-id": scope(artifacts=["xyz"]),
        "uppercase-artifact-id": scope(artifacts=[ARTIFACTS[0].upper()]),
        "scope-not-object": with_(scope=list(MODELS)),
        "empty-reason": with_(reason=" "),
        "reason-too-long": with_(reason="x" * 2001),
        "reason-bidi-control": with_(reason="halt \u202egnp.1-reitnorf"),
        "reason-escape-sequence": with_(reason="halt \x1b[2Jfrontier-1"),
        "reason-not-nfc": with_(reason="cafe\u0301"),
    }


def adversarial_cases() -> list[Case]:
    """Every adversarial order case; each must be rejected with ``case.reason``."""
    cases: list[Case] = []
    for p_name in PANELS:
        for action in ORDER_ACTIONS:
            cases.extend(_order_cases_for(p_name, action))

    # A lift may not name a destroyed model (destroy cannot be lifted).
    for p_name in PANELS:
        p = panel(p_name)
        for label, destroyed, drill in (
            ("one-of-two", frozenset({MODELS[1]}), False),
            ("all", frozenset(MODELS), False),
            ("drill-lift", frozenset({MODELS[0], "unrelated"}), True),
        ):
            lift = make_order("lift", p_name, drill=drill)
            lift_sigs = p.sign_order(lift)
            cases.append(
                Case(
                    f"lift-of-destroyed-{label}/{p_name}/lift",
                    partial(inputs, lift.encode(), lift_sigs, p, destroyed=destroyed),
                    str(OrderReason.DESTROYED_MODEL),
                )
            )

    cases += _borrowed_threshold_cases()

    # Malformed bodies, signed as they are, so only their structure is to blame.
    p = panel("ed25519")
    for variant, mbody in _malformed_bodies().items():
        cases.append(
            Case(
                f"malformed-{variant}/ed25519/halt",
                partial(inputs, mbody, p.sign(ORDER_DOMAIN + mbody, 3), p),
                str(OrderReason.MALFORMED),
            )
        )

    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


@cache
def low_panel() -> Panel:
    """A set whose lift and destroy thresholds (2) are below its halt threshold (3)."""
    return Panel("low", ED25519_SIGNERS, SignerSet.bootstrap(
        [s.key for s in ED25519_SIGNERS], thresholds=dict(DEV_THRESHOLDS, lift=2, destroy=2)))


def _borrowed_threshold_cases() -> list[Case]:
    """Orders signed below the halt threshold that reach beyond the drill register."""
    cases: list[Case] = []
    not_drill, short = str(OrderReason.NOT_DRILL), str(OrderReason.THRESHOLD_NOT_MET)
    for p_name in PANELS:
        p = panel(p_name)
        drill = make_order("drill", p_name)
        body, sigs = drill.encode(), p.sign_order(drill)
        every = p.sign_order(drill, 5)
        registers: dict[str, tuple[bytes, tuple[Signature, ...]]] = {
            "no-register": (b"", ()),
            "register-misses-an-artifact": make_register(p, artifacts=ARTIFACTS[1:]),
            "register-misses-a-model": make_register(p, models=MODELS[:1]),
            "register-of-other-models": make_register(p, models=("drill-model",), artifacts=()),
            "register-for-another-signer-set": make_register(p, signer_set_version=2),
            "register-signed-below-rotate": make_register(p, signers=p.threshold("rotate") - 1),
            "register-signed-by-outsiders": (make_register(p)[0], tuple(
                s.sign(DRILL_REGISTER_DOMAIN + make_register(p)[0], DRILL_REGISTER_NAMESPACE)
                for s in (OUTSIDER, OUTSIDER_SSH))),
            "register-signed-as-an-order": (make_register(p)[0], p.sign(
                ORDER_DOMAIN + make_register(p)[0], 5)),
        }
        for label, reg in registers.items():
            cases.append(Case(f"drill-beyond-register-{label}/{p_name}/drill",
                              partial(inputs, body, sigs, p, register=reg), not_drill))
            # Even signed by everyone, a drill is never a halt of production.
            cases.append(Case(f"drill-beyond-register-{label}-all-signers/{p_name}/drill",
                              partial(inputs, body, every, p, register=reg), not_drill))
    lp = low_panel()
    production = make_register(lp, models=("drill-model",), artifacts=())
    for action in ("lift", "destroy"):
        order = make_order(action, "ed25519")
        body = order.encode()
        cases.append(Case(f"{action}-below-halt-of-production/low/{action}",
                          partial(inputs, body, lp.sign_order(order), lp, register=production), short))
    lift = make_order("lift", "ed25519")
    cases.append(Case("lift-of-destroyed-artifact/ed25519/lift",
                      partial(inputs, lift.encode(), panel("ed25519").sign_order(lift), panel("ed25519"),
                              destroyed_artifacts=frozenset(ARTIFACTS[:1])),
                      str(OrderReason.DESTROYED_MODEL)))
    return cases


def valid_cases() -> list[Case]:
    """Inputs that must verify: exact threshold, above it, every signer kind mixed,
    junk attached beside a quorum, and the edges of the validity window."""
    cases: list[Case] = []
    for p_name in PANELS:
        p = panel(p_name)
        for action in ORDER_ACTIONS:
            order = make_order(action, p_name)
            body = order.encode()
            t = p.threshold(action)
            exact = p.sign_order(order)
            everyone = p.sign_order(order, 5)
            junk = (
                OUTSIDER.sign(ORDER_DOMAIN + body, ORDER_NAMESPACE),
                _garbage(everyone[4], "bitflip"),
                exact[0],
            )
            tag = f"{p_name}/{action}"
            cases += [
                Case(f"exact-threshold/{tag}", partial(inputs, body, exact, p), ""),
                Case(f"all-signers/{tag}", partial(inputs, body, everyone, p), ""),
                Case(f"reversed-order/{tag}", partial(inputs, body, everyone[::-1], p), ""),
                Case(f"junk-beside-quorum/{tag}", partial(inputs, body, exact + junk, p), ""),
                Case(f"junk-before-quorum/{tag}", partial(inputs, body, junk + exact, p), ""),
                Case(f"last-signers/{tag}", partial(inputs, body, everyone[5 - t :], p), ""),
                Case(
                    f"skew-edge/{tag}",
                    partial(inputs, body, exact, p, now=order.issued_at - 60),
                    "",
                ),
                Case(
                    f"last-second/{tag}",
                    partial(inputs, body, exact, p, now=order.not_after - 1),
                    "",
                ),
                Case(
                    f"fresh-state/{tag}",
                    partial(inputs, body, exact, p, state=ExecutedOrders()),
                    "",
                ),
            ]
        halt = make_order("halt", p_name)
        cases.append(
            Case(
                f"halt-without-register/{p_name}/halt",
                partial(inputs, halt.encode(), p.sign_order(halt), p, register=(b"", ())),
                "",
            )
        )
        cases.append(
            Case(
                f"halt-of-destroyed-model/{p_name}/halt",
                partial(inputs, halt.encode(), p.sign_order(halt), p, destroyed=frozenset(MODELS)),
                "",
            )
        )
    lp = low_panel()
    for action in ("lift", "destroy"):
        order = make_order(action, "ed25519")
        cases.append(Case(f"{action}-below-halt-of-drill-scope/low/{action}",
                          partial(inputs, order.encode(), lp.sign_order(order), lp), ""))
    return cases


# -- rotation cases ---------------------------------------------------------------------


class RotationInputs(NamedTuple):
    trusted: SignerSet
    new_set_bytes: bytes
    signatures: tuple[Signature, ...]


@dataclass(frozen=True)
class RotationCase:
    name: str
    build: Callable[[], RotationInputs]
    reason: str
    also: tuple[str, ...] = ()


def sign_set(
    signers: Sequence[Signer],
    new: SignerSet | bytes,
    *,
    domain: bytes = SIGNER_SET_DOMAIN,
    namespace: str = SIGNER_SET_NAMESPACE,
) -> tuple[Signature, ...]:
    body = new.encode() if isinstance(new, SignerSet) else new
    return tuple(s.sign(domain + body, namespace) for s in signers)


def _unique(signers: Sequence[Signer]) -> list[Signer]:
    out: list[Signer] = []
    for s in signers:
        if s.key.key_id not in {x.key.key_id for x in out}:
            out.append(s)
    return out


def _rotation_cases_for(p_name: str) -> list[RotationCase]:
    R = RotationReason
    v1, v2 = panel(p_name), panel_v2(p_name)
    old_only = [s for s in v1.signers if s not in v2.signers]  # the three leaving
    both = [s for s in v1.signers if s in v2.signers]  # the two staying
    new_only = list(NEW_SIGNERS)  # the three joining
    everyone = old_only + both + new_only
    v2_bytes = v2.signer_set.encode()
    cases: list[RotationCase] = []

    def add(name: str, build: Callable[[], RotationInputs], reason: str, also: tuple[str, ...] = ()) -> None:
        cases.append(RotationCase(f"{name}/{p_name}", build, str(reason), tuple(str(a) for a in also)))

    def on_v1(body: bytes, signers: Sequence[Signer], **kw: Any) -> Callable[[], RotationInputs]:
        return lambda: RotationInputs(v1.signer_set, body, sign_set(signers, body, **kw))

    # Not signed by enough of the old set (the rotate threshold is 4 of 5).
    add("not-signed-by-old-set", on_v1(v2_bytes, new_only), R.OLD_THRESHOLD_NOT_MET, also=(R.NEW_THRESHOLD_NOT_MET,))
    add("old-below-threshold-2-of-4", on_v1(v2_bytes, both + new_only), R.OLD_THRESHOLD_NOT_MET)
    add("old-below-threshold-3-of-4", on_v1(v2_bytes, old_only[:1] + both + new_only), R.OLD_THRESHOLD_NOT_MET)
    # Not signed by enough of the new keys: the new holders did not prove possession.
    # All five old keys sign, none of the three joining ones (the new set counts only the two staying).
    add("not-signed-by-new-keys", on_v1(v2_bytes, old_only + both), R.NEW_THRESHOLD_NOT_MET)
    add("new-below-threshold-3-of-4", on_v1(v2_bytes, old_only + both + new_only[:1]), R.NEW_THRESHOLD_NOT_MET)
    add("unsigned", on_v1(v2_bytes, []), R.OLD_THRESHOLD_NOT_MET, also=(R.NEW_THRESHOLD_NOT_MET,))
    twice = sign_set(both + new_only, v2_bytes) + sign_set(both, v2_bytes) + sign_set(both, v2_bytes)
    add("old-keys-counted-twice", lambda: RotationInputs(v1.signer_set, v2_bytes, twice), R.OLD_THRESHOLD_NOT_MET)
    # Signed over the wrong bytes.
    add(
        "no-domain-prefix",
        on_v1(v2_bytes, everyone, domain=b""),
        R.OLD_THRESHOLD_NOT_MET,
        also=(R.NEW_THRESHOLD_NOT_MET,),
    )
    add(
        "order-domain",
        on_v1(v2_bytes, everyone, domain=ORDER_DOMAIN),
        R.OLD_THRESHOLD_NOT_MET,
        also=(R.NEW_THRESHOLD_NOT_MET,),
    )
    ssh_everyone = tuple(_sign_sshsig(s, SIGNER_SET_DOMAIN + v2_bytes, ORDER_NAMESPACE) for s in everyone)
    add(
        "order-namespace",
        lambda: RotationInputs(v1.signer_set, v2_bytes, ssh_everyone),
        R.OLD_THRESHOLD_NOT_MET,
        also=(R.NEW_THRESHOLD_NOT_MET,),
    )
    # Versions and the chain.
    v3 = v2.signer_set.successor([s.key for s in v2.signers])
    add("skips-a-version", on_v1(v3.encode(), everyone), R.SKIPPED_VERSION)
    v1_bytes = v1.signer_set.encode()
    rollback_sigs = sign_set(everyone, v1_bytes)
    add("rollback-to-older-set", lambda: RotationInputs(v2.signer_set, v1_bytes, rollback_sigs), R.ROLLBACK)
    forked = v1.signer_set.successor([s.key for s in v1.signers], thresholds=dict(DEV_THRESHOLDS, drill=1))
    fork_sigs = sign_set(everyone, forked)
    add("fork-at-same-version", lambda: RotationInputs(v2.signer_set, forked.encode(), fork_sigs), R.FORK)
    broken = SignerSet(version=2, keys=v2.signer_set.keys, thresholds=v2.signer_set.thresholds, previous="ab" * 32)
    add("broken-chain", on_v1(broken.encode(), everyone), R.BROKEN_CHAIN)
    # One newcomer tries to add themself and lower every threshold to 1.
    weakened = v1.signer_set.successor(
        [s.key for s in v1.signers] + [NEW_SIGNERS[0].key], thresholds=dict.fromkeys(DEV_THRESHOLDS, 1)
    )
    add("weakened-by-one-newcomer", on_v1(weakened.encode(), [NEW_SIGNERS[0]]), R.OLD_THRESHOLD_NOT_MET)

    # Bytes that are not a canonical signer set.
    obj = v2.signer_set.to_json()
    keys = obj["keys"]
    twin = sorted([*keys, dict(keys[0], name="twin")], key=lambda k: (k["key_id"], k["name"]))
    th = obj["thresholds"]
    bad: dict[str, tuple[bytes, str]] = {
        "spaces": (json.dumps(obj, sort_keys=True).encode(), R.NON_CANONICAL),
        "keys-out-of-order": (encode_canonical(dict(obj, keys=keys[::-1])), R.NON_CANONICAL),
        "trailing-newline": (v2_bytes + b"\n", R.NON_CANONICAL),
        "not-json": (b"rotate!", R.MALFORMED),
        "duplicate-key-id": (encode_canonical(dict(obj, keys=twin)), R.MALFORMED),
        "duplicate-name": (encode_canonical(dict(obj, keys=[dict(k, name="same") for k in keys])), R.MALFORMED),
        "threshold-zero": (encode_canonical(dict(obj, thresholds=dict(th, halt=0))), R.MALFORMED),
        "threshold-above-keys": (encode_canonical(dict(obj, thresholds=dict(th, rotate=6))), R.MALFORMED),
        "threshold-missing": (
            encode_canonical(dict(obj, thresholds={a: n for a, n in th.items() if a != "lift"})),
            R.MALFORMED,
        ),
        "threshold-extra-action": (encode_canonical(dict(obj, thresholds=dict(th, wipe=1))), R.MALFORMED),
        "version-zero": (encode_canonical(dict(obj, version=0)), R.MALFORMED),
        "version-bool": (encode_canonical(dict(obj, version=True)), R.MALFORMED),
        "previous-missing": (encode_canonical(dict(obj, previous=None)), R.MALFORMED),
        "key-id-mismatch": (encode_canonical(dict(obj, keys=[dict(keys[0], key_id="0" * 64), *keys[1:]])), R.MALFORMED),
        "no-keys": (encode_canonical(dict(obj, keys=[])), R.MALFORMED),
        "extra-field": (encode_canonical(dict(obj, note="trust me")), R.MALFORMED),
        "encoding-2": (encode_canonical(dict(obj, encoding=2)), R.MALFORMED),
        "unknown-keytype": (encode_canonical(dict(obj, keys=[dict(keys[0], keytype="rsa"), *keys[1:]])), R.MALFORMED),
    }
    for variant, (body, reason) in bad.items():
        add(f"bad-set-{variant}", on_v1(body, everyone), reason)
    return cases


def rotation_cases() -> list[RotationCase]:
    """Every adversarial rotation; each must be rejected with ``case.reason``."""
    cases = [c for p_name in PANELS for c in _rotation_cases_for(p_name)]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
