"""Signer sets: keys and key ids, set rules, threshold counting (TUF-style
tables), rotation as a state machine, and the private-key file helpers."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from custos.client.signerkeys import load_private_key, save_private_key
from custos.core import sshsig
from custos.core.signers import (
    ACTIONS,
    DEV_SIGNER_NAMES,
    DEV_THRESHOLDS,
    MAX_KEYS,
    SIGNER_SET_DOMAIN,
    SIGNER_SET_NAMESPACE,
    KeyFileError,
    NonCanonicalSignerSet,
    RotationReason,
    RotationRejected,
    Signature,
    SignerKey,
    SignerSet,
    SignerSetError,
    TrustedSignerSets,
    check_threshold,
    decode_signatures,
    generate_ed25519,
    key_id_of,
    public_key_from_hex,
    public_key_from_openssh,
    public_key_hex,
    public_key_to_openssh,
    sign_raw,
    verify_rotation,
)
from custos.errors import Conflict, InvalidInput, NotFound
from tests.core.order_cases import (
    ED25519_SIGNERS,
    MIXED_SIGNERS,
    NEW_SIGNERS,
    Signer,
    ed25519_key,
    make_signer,
    p256_key,
    panel,
    sign_set,
)

KEYS = [s.key for s in ED25519_SIGNERS]


def signer_set(keys: list[SignerKey] | None = None, **thresholds: int) -> SignerSet:
    return SignerSet.bootstrap(KEYS if keys is None else keys, thresholds=dict(DEV_THRESHOLDS, **thresholds))


# -- keys --------------------------------------------------------------------------------


def test_key_id_names_the_key_pair_not_its_format() -> None:
    private = ed25519_key("exec1")
    raw = SignerKey.from_ed25519(private.public_key(), name="exec1")
    hexed = SignerKey.from_hex(public_key_hex(private), name="exec1")
    ssh = SignerKey.from_openssh(public_key_to_openssh(private, "exec1@laptop"), name="exec1")
    assert raw == hexed == ssh
    assert raw.key_id == key_id_of("ed25519", raw.public)
    assert len(raw.key_id) == 64 and raw.key_id != KEYS[1].key_id
    # The same point as a security key: another way of signing, the same key id.
    token = SignerKey(name="exec1-token", keytype="sk-ed25519", public=raw.public, application="ssh:")
    assert token.key_id == raw.key_id
    with pytest.raises(SignerSetError, match="duplicate key id"):
        signer_set([*KEYS, token])


def test_public_key_helpers() -> None:
    private = generate_ed25519()
    assert public_key_hex(public_key_from_hex(public_key_hex(private))) == public_key_hex(private)
    line = public_key_to_openssh(private.public_key())
    assert line.startswith("ssh-ed25519 AAAA")
    assert public_key_hex(public_key_from_openssh(line)) == public_key_hex(private)
    ec_line = sshsig.SshPublicKey.from_ecdsa(p256_key("x").public_key()).to_openssh()
    with pytest.raises(InvalidInput, match="ssh-ed25519"):
        public_key_from_openssh(ec_line)
    with pytest.raises(InvalidInput):
        public_key_from_hex("abc")
    key = SignerKey.from_openssh(ec_line, name="exec9")
    assert key.keytype == "ecdsa-p256" and key.to_openssh().startswith(ec_line)
    assert SignerKey.from_json(key.to_json()) == key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "Exec1"}, "signer name"),
        ({"name": ""}, "signer name"),
        ({"name": "exec 1"}, "signer name"),
        ({"name": "-exec"}, "signer name"),
        ({"keytype": "rsa"}, "key type"),
        ({"public": bytes(31)}, "32 bytes"),
        ({"keytype": "ecdsa-p256", "public": bytes(65)}, "uncompressed|point"),
        ({"keytype": "sk-ed25519"}, "application"),
        ({"application": "ssh:"}, "no application"),
    ],
)
def test_signer_key_refuses(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"name": "exec1", "keytype": "ed25519", "public": KEYS[0].public}
    args.update(kwargs)
    with pytest.raises(SignerSetError, match=match):
        SignerKey(**args)


def test_signer_key_json_refuses_tampering() -> None:
    obj = KEYS[0].to_json()
    assert SignerKey.from_json(obj) == KEYS[0]
    for bad in (
        dict(obj, key_id=KEYS[1].key_id),
        dict(obj, public=KEYS[1].public.hex()),  # key_id no longer matches
        dict(obj, public=obj["public"].upper()),
        dict(obj, extra=1),
        {k: v for k, v in obj.items() if k != "name"},
        dict(obj, application="ssh:"),
        [obj],
    ):
        with pytest.raises(SignerSetError):
            SignerKey.from_json(bad)


# -- signer sets --------------------------------------------------------------------------


def test_dev_defaults() -> None:
    assert dict(DEV_THRESHOLDS) == {"drill": 2, "halt": 3, "lift": 3, "destroy": 4, "rotate": 4}
    assert DEV_SIGNER_NAMES == ("exec1", "exec2", "exec3", "exec4", "exec5")
    with pytest.raises(TypeError):
        DEV_THRESHOLDS["halt"] = 1  # type: ignore[index]
    assert set(ACTIONS) == set(DEV_THRESHOLDS)


def test_bootstrap_encoding() -> None:
    s = signer_set()
    assert s.version == 1 and s.previous is None
    assert [k.key_id for k in s.keys] == sorted(k.key_id for k in KEYS)
    body = s.encode()
    assert body.startswith(b'{"encoding":1,"keys":[{"key_id":"')
    assert body.endswith(
        b'"previous":null,"thresholds":{"destroy":4,"drill":2,"halt":3,"lift":3,"rotate":4},"version":1}'
    )
    assert s.signature_input() == SIGNER_SET_DOMAIN + body
    assert SignerSet.decode(body) == s and hash(SignerSet.decode(body)) == hash(s)
    assert s.threshold("halt") == 3 and s.key_by_name("exec2") == KEYS[1] and s.key(KEYS[2].key_id) == KEYS[2]
    assert s.key("0" * 64) is None
    with pytest.raises(InvalidInput):
        s.threshold("wipe")
    # Order of the keys given does not matter: the encoding sorts them.
    assert SignerSet.bootstrap(KEYS[::-1], thresholds=DEV_THRESHOLDS).encode() == body


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: signer_set(halt=0), "halt threshold"),
        (lambda: signer_set(rotate=6), "rotate threshold"),
        (lambda: signer_set(drill=True), "drill threshold"),
        (lambda: SignerSet.bootstrap(KEYS, thresholds={"drill": 1, "halt": 1, "lift": 1, "destroy": 1}), "exactly"),
        (lambda: SignerSet.bootstrap(KEYS, thresholds=dict(DEV_THRESHOLDS, wipe=1)), "exactly"),
        (lambda: SignerSet.bootstrap([], thresholds=DEV_THRESHOLDS), "1 to"),
        (lambda: signer_set([*KEYS, KEYS[0]]), "duplicate key id"),
        (lambda: signer_set([*KEYS, SignerKey.from_ed25519(ed25519_key("x").public_key(), name="exec1")]), "name"),
        (lambda: SignerSet(version=0, keys=tuple(KEYS), thresholds=DEV_THRESHOLDS), "version"),
        (lambda: SignerSet(version=2, keys=tuple(KEYS), thresholds=DEV_THRESHOLDS), "previous"),
        (lambda: SignerSet(version=1, keys=tuple(KEYS), thresholds=DEV_THRESHOLDS, previous="a" * 64), "no previous"),
        (lambda: SignerSet(version=1, keys=tuple(KEYS), thresholds=DEV_THRESHOLDS, encoding=2), "encoding"),
        (
            lambda: SignerSet.bootstrap(
                [SignerKey.from_ed25519(ed25519_key(f"k{i}").public_key(), name=f"k{i}") for i in range(MAX_KEYS + 1)],
                thresholds=dict.fromkeys(DEV_THRESHOLDS, 1),
            ),
            "1 to",
        ),
    ],
)
def test_signer_set_rules(build: Any, match: str) -> None:
    with pytest.raises(SignerSetError, match=match):
        build()


def test_decode_refuses_non_canonical_and_malformed() -> None:
    body = signer_set().encode()
    with pytest.raises(NonCanonicalSignerSet):
        SignerSet.decode(body + b"\n")
    with pytest.raises(SignerSetError) as exc:
        SignerSet.decode(body[:-2])
    assert not isinstance(exc.value, NonCanonicalSignerSet)
    with pytest.raises(SignerSetError, match="larger"):
        SignerSet.decode(b" " * (256 * 1024 + 1))


# -- threshold counting (cf. python-tuf's table-driven root tests) ------------------------------


@pytest.mark.parametrize(
    ("threshold", "signed_by", "met", "duplicates"),
    [
        (3, [0, 1, 2], True, []),
        (3, [0, 2, 4], True, []),
        (3, [4, 3, 2, 1, 0], True, []),
        (3, [0, 1], False, []),
        (3, [0, 0, 1], False, [0]),
        (3, [0, 0, 0], False, [0]),
        (3, [0, 1, 1, 2], True, [1]),
        (1, [4], True, []),
        (5, [0, 1, 2, 3, 4], True, []),
        (5, [0, 1, 2, 3, 3], False, [3]),
        (3, [], False, []),
    ],
)
def test_threshold_table(threshold: int, signed_by: list[int], met: bool, duplicates: list[int]) -> None:
    s = signer_set()
    message = b"custos.v1.test\x00payload"
    sigs = [sign_raw(ED25519_SIGNERS[i].private_key, message) for i in signed_by]  # type: ignore[arg-type]
    result = check_threshold(s, sigs, message, namespace="custos-test", threshold=threshold)
    assert bool(result) is met
    assert set(result.valid) == {KEYS[i].key_id for i in signed_by}
    assert set(result.duplicates) == {KEYS[i].key_id for i in duplicates}
    assert result.missing == max(0, threshold - len(set(signed_by)))
    assert result.invalid == () and result.unknown == ()


def test_zero_threshold_is_never_met() -> None:
    result = check_threshold(signer_set(), [], b"x", namespace="n", threshold=0)
    assert not result and result.missing == 0


def test_each_key_kind_signs_and_is_checked_by_its_own_rules() -> None:
    s = SignerSet.bootstrap([m.key for m in MIXED_SIGNERS], thresholds=DEV_THRESHOLDS)
    message = b"custos.v1.test\x00payload"
    sigs = [m.sign(message, "custos-test") for m in MIXED_SIGNERS]
    assert {sig.kind for sig in sigs} == {"ed25519", "sshsig"}
    assert len(check_threshold(s, sigs, message, namespace="custos-test", threshold=5).valid) == 5
    # Another namespace: only the raw Ed25519 signer (no namespace) still verifies.
    result = check_threshold(s, sigs, message, namespace="other", threshold=5)
    assert result.valid == (MIXED_SIGNERS[0].key.key_id,) and len(result.invalid) == 4
    assert all("namespace" in p for p in result.problems)


def test_signature_json() -> None:
    sig = Signature("ab" * 32, "cd" * 64)
    assert Signature.from_json(sig.to_json()) == sig
    for bad in ({"key_id": 1, "sig": "x"}, {"key_id": "x"}, {"key_id": "x", "sig": "y", "z": 1}, "x"):
        with pytest.raises(SignerSetError):
            Signature.from_json(bad)
    with pytest.raises(SignerSetError):
        Signature("x" * 129, "y")
    with pytest.raises(SignerSetError):
        Signature("x", "y" * (sshsig.MAX_ARMORED + 1))
    with pytest.raises(SignerSetError, match="at most"):
        decode_signatures([sig.to_json()] * 1000)
    with pytest.raises(SignerSetError, match="not JSON"):
        decode_signatures(b"{")


# -- rotation ---------------------------------------------------------------------------------


def _rotate(
    old: SignerSet, new_keys: list[SignerKey], signers: list[Signer], **thresholds: int
) -> tuple[SignerSet, bytes, tuple[Signature, ...]]:
    new = old.successor(new_keys, thresholds=dict(DEV_THRESHOLDS, **thresholds) if thresholds else None)
    return new, new.encode(), sign_set(signers, new)


ALL = [*ED25519_SIGNERS, *NEW_SIGNERS]


@pytest.mark.parametrize(
    ("old_signing", "new_signing", "reasons"),
    [
        # old set: exec1..exec5 (rotate 4); new set: exec4, exec5, new6, new7, new8 (rotate 4).
        ([0, 1, 2, 3], [3, 4, 5, 6], []),
        ([0, 1, 2], [3, 5, 6, 7], []),  # exec4 counts in both sets
        ([0], [3, 4, 5, 6, 7], ["old_threshold_not_met"]),  # 3 of the old keys
        ([0, 1], [5, 6, 7], ["old_threshold_not_met", "new_threshold_not_met"]),
        ([0, 1, 2, 3, 4], [], ["new_threshold_not_met"]),
        ([0, 1, 2, 3, 4], [5], ["new_threshold_not_met"]),
        ([], [5, 6, 7], ["old_threshold_not_met", "new_threshold_not_met"]),
    ],
)
def test_rotation_table(old_signing: list[int], new_signing: list[int], reasons: list[str]) -> None:
    old = signer_set()
    new_keys = [s.key for s in ALL[3:]]
    signers = [ALL[i] for i in sorted(set(old_signing) | set(new_signing))]
    _, body, sigs = _rotate(old, new_keys, signers)
    result = verify_rotation(old, body, sigs)
    assert result.reasons == reasons
    assert bool(result) is (not reasons)


def test_chain_moves_forward_only() -> None:
    v1 = signer_set()
    trusted = TrustedSignerSets.from_pinned_bytes(v1.encode())
    v2, b2, s2 = _rotate(v1, [s.key for s in ALL[3:]], ALL)
    v3, b3, s3 = _rotate(v2, [s.key for s in ALL[4:]], ALL[3:], halt=2, rotate=3)

    # v3 before v2: skipped; state unchanged.
    with pytest.raises(RotationRejected) as exc:
        trusted.update(b3, s3)
    assert RotationReason.SKIPPED_VERSION in exc.value.verification.reasons
    assert trusted.current == v1

    assert trusted.update(b2, s2) == v2
    assert trusted.update(b2, s2) == v2, "re-delivering the current set is a no-op"
    assert trusted.update(b2, []) == v2, "even without its signatures"
    assert trusted.update(b3, s3) == v3 and trusted.version == 3
    assert trusted.current.threshold("halt") == 2

    # Back to an older set, or a fork of the current version: refused.
    for body, sigs, reason in ((b2, s2, "rollback"), (v1.encode(), [], "rollback")):
        with pytest.raises(RotationRejected) as exc:
            trusted.update(body, sigs)
        assert reason in exc.value.verification.reasons
    fork, fork_body, fork_sigs = _rotate(v2, [s.key for s in ALL[4:]], ALL[3:], halt=1)
    assert fork.version == 3 and fork != v3
    with pytest.raises(RotationRejected) as exc:
        trusted.update(fork_body, fork_sigs)
    assert exc.value.verification.reasons == ["fork"]
    assert trusted.current == v3
    assert trusted.verify(v3.encode(), []).reasons[0] == "already_current"


def test_rotation_signatures_are_domain_and_namespace_separated() -> None:
    v1 = signer_set()
    _, body, _ = _rotate(v1, [s.key for s in ALL[3:]], [])
    ssh = [make_signer(s.name, "ssh") for s in ALL]  # same keys, signing with SSHSIG
    good = sign_set(ssh, body)
    assert verify_rotation(v1, body, good)
    order_ns = sign_set(ssh, body, namespace="custos-order")
    assert verify_rotation(v1, body, order_ns).reasons == ["old_threshold_not_met", "new_threshold_not_met"]
    assert SIGNER_SET_NAMESPACE == "custos-signer-set"


def test_trusted_signer_sets_refuses_bad_pin() -> None:
    with pytest.raises(SignerSetError):
        TrustedSignerSets.from_pinned_bytes(b"{}")
    with pytest.raises(InvalidInput):
        TrustedSignerSets(b"x")  # type: ignore[arg-type]
    assert TrustedSignerSets(panel("mixed").signer_set).version == 1


# -- private key files ----------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, b"correct horse battery staple"])
def test_save_and_load_private_key(tmp_path: Path, passphrase: bytes | None) -> None:
    key = generate_ed25519()
    path = tmp_path / "exec1.pem"
    save_private_key(path, key, passphrase)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert ("ENCRYPTED PRIVATE KEY" in text) is (passphrase is not None)
    loaded = load_private_key(path, passphrase)
    assert public_key_hex(loaded) == public_key_hex(key)
    with pytest.raises(Conflict):
        save_private_key(path, generate_ed25519(), passphrase)
    assert public_key_hex(load_private_key(path, passphrase)) == public_key_hex(key), "not overwritten"


def test_load_private_key_refusals(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    save_private_key(path, generate_ed25519(), b"secret")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(path, b"guess")
    with pytest.raises(KeyFileError, match="missing"):
        load_private_key(path, None)
    plain = tmp_path / "plain.pem"
    save_private_key(plain, generate_ed25519(), None)
    with pytest.raises(KeyFileError):
        load_private_key(plain, b"unneeded")
    os.chmod(plain, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(plain, None)
    with pytest.raises(NotFound):
        load_private_key(tmp_path / "absent.pem", None)
    with pytest.raises(KeyFileError, match="regular file"):
        load_private_key(tmp_path, None)
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    ec_path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_private_key(ec_path, None)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_private_key(garbage, None)
    with pytest.raises(InvalidInput):
        save_private_key(tmp_path / "empty-pass.pem", generate_ed25519(), b"")
    assert not (tmp_path / "empty-pass.pem").exists()


def test_save_private_key_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("do not touch")
    link = tmp_path / "key.pem"
    link.symlink_to(target)
    with pytest.raises(Conflict):
        save_private_key(link, generate_ed25519(), None)
    assert target.read_text() == "do not touch"


def test_load_openssh_private_key(tmp_path: Path) -> None:
    key = ed25519_key("openssh-format")
    path = tmp_path / "id_ed25519"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    path.chmod(0o600)
    assert public_key_hex(load_private_key(path, None)) == public_key_hex(key)


def test_key_from_ssh_keygen_public_file(tmp_path: Path) -> None:
    """A .pub file straight from ssh-keygen imports as a signer key (skips without ssh-keygen)."""
    from tests.core.test_sshsig import _ssh_keygen

    tool = _ssh_keygen()
    subprocess.run([tool, "-q", "-t", "ed25519", "-N", "", "-C", "exec@host", "-f", str(tmp_path / "k")], check=True)
    line = (tmp_path / "k.pub").read_text()
    key = SignerKey.from_openssh(line, name="exec6")
    assert key.keytype == "ed25519"
    assert key.to_openssh().split()[:2] == line.split()[:2]
    assert public_key_hex(load_private_key(tmp_path / "k", None)) == key.public.hex()
    raw = load_private_key(tmp_path / "k", None).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key.key_id == key_id_of("ed25519", raw)

    # A passphrase-protected OpenSSH key needs bcrypt in cryptography: loaded, or refused cleanly.
    subprocess.run([tool, "-q", "-t", "ed25519", "-N", "pw", "-f", str(tmp_path / "enc")], check=True)
    try:
        loaded = load_private_key(tmp_path / "enc", b"pw")
    except KeyFileError:
        pass
    else:
        assert loaded is not None
        with pytest.raises(KeyFileError):
            load_private_key(tmp_path / "enc", b"wrong")
