"""SSHSIG: interoperability with the real ``ssh-keygen -Y sign`` / ``-Y verify``,
refusals (namespace, message, signature, key), FIDO token signatures, and a strict parser.

Signatures recorded from ssh-keygen are kept in vectors/sshsig.json so the
verifier is checked against real OpenSSH output even where ssh-keygen is
absent; record them again with ``python -m tests.core.test_sshsig --record-vectors``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custos.core import sshsig
from custos.core.orders import ORDER_NAMESPACE, OrderReason, verify_order
from custos.core.signers import DEV_THRESHOLDS, Signature, SignerKey, SignerSet
from custos.errors import IntegrityError, InvalidInput
from tests.core.order_cases import (
    ED25519_SIGNERS,
    NOW,
    default_state,
    ed25519_key,
    make_order,
    p256_key,
    sk_sign,
)

VECTORS_FILE = Path(__file__).parent / "vectors" / "sshsig.json"
MESSAGE = make_order("halt").signature_input()


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("ssh-keygen is required in CI and is missing (apt-get install openssh-client)", pytrace=False)
        pytest.skip("ssh-keygen not installed")
    return path


@pytest.fixture(scope="module")
def ssh_keygen() -> str:
    return _ssh_keygen()


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), input=stdin, capture_output=True, check=False, timeout=30)


def keygen(tool: str, directory: Path, name: str, keytype: str) -> tuple[Path, str]:
    key = directory / name
    extra = ["-b", "256"] if keytype == "ecdsa" else []
    result = _run(tool, "-q", "-t", keytype, *extra, "-N", "", "-C", name, "-f", str(key))
    assert result.returncode == 0, result.stderr
    return key, (directory / f"{name}.pub").read_text()


def ssh_sign(tool: str, key: Path, message: bytes, directory: Path, *, namespace: str, hashalg: str = "") -> str:
    data = directory / "message"
    data.write_bytes(message)
    sig = directory / "message.sig"
    sig.unlink(missing_ok=True)
    options = ["-O", f"hashalg={hashalg}"] if hashalg else []
    result = _run(tool, "-Y", "sign", "-n", namespace, *options, "-f", str(key), str(data))
    assert result.returncode == 0, result.stderr
    return sig.read_text()


@pytest.fixture(scope="module")
def keys(ssh_keygen: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("ssh")
    out: dict[str, Any] = {"dir": directory}
    for name, keytype in (("ed", "ed25519"), ("ec", "ecdsa"), ("other", "ed25519")):
        out[name] = keygen(ssh_keygen, directory, name, keytype)
    yield out


# -- real ssh-keygen ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hashalg"), [("ed", ""), ("ed", "sha256"), ("ec", ""), ("ec", "sha256")])
def test_verifies_ssh_keygen_signature(ssh_keygen: str, keys: dict[str, Any], name: str, hashalg: str) -> None:
    key, pub = keys[name]
    armored = ssh_sign(ssh_keygen, key, MESSAGE, keys["dir"], namespace=ORDER_NAMESPACE, hashalg=hashalg)
    public = sshsig.SshPublicKey.from_openssh(pub)
    sig = sshsig.verify(armored, MESSAGE, namespace=ORDER_NAMESPACE, public_key=public)
    assert sig.hash_algorithm == (hashalg or "sha512")
    assert sig.public_key == public

    # Refusals: wrong namespace, tampered message, tampered signature, another key.
    with pytest.raises(sshsig.SshSigError, match="namespace"):
        sshsig.verify(armored, MESSAGE, namespace="file", public_key=public)
    with pytest.raises(sshsig.SshSigError, match="does not verify"):
        sshsig.verify(armored, MESSAGE[:-1] + b"!", namespace=ORDER_NAMESPACE, public_key=public)
    blob = bytearray(sshsig.dearmor(armored))
    blob[-3] ^= 0x10
    with pytest.raises(sshsig.SshSigError):
        sshsig.verify(sshsig.armor(bytes(blob)), MESSAGE, namespace=ORDER_NAMESPACE, public_key=public)
    other = sshsig.SshPublicKey.from_openssh(keys["other"][1])
    with pytest.raises(sshsig.SshSigError, match="different key"):
        sshsig.verify(armored, MESSAGE, namespace=ORDER_NAMESPACE, public_key=other)


def test_signature_of_another_key_swapped_in_is_refused(ssh_keygen: str, keys: dict[str, Any]) -> None:
    """Re-labelling another key's signature with the expected public key does not verify."""
    armored = ssh_sign(ssh_keygen, keys["other"][0], MESSAGE, keys["dir"], namespace=ORDER_NAMESPACE)
    parsed = sshsig.parse(armored)
    expected = sshsig.SshPublicKey.from_openssh(keys["ed"][1])
    forged = sshsig.assemble(expected, ORDER_NAMESPACE, parsed.hash_algorithm, parsed.signature_type, parsed.signature)
    with pytest.raises(sshsig.SshSigError, match="does not verify"):
        sshsig.verify(forged, MESSAGE, namespace=ORDER_NAMESPACE, public_key=expected)


@pytest.mark.parametrize("which", ["ed25519", "p256"])
def test_ssh_keygen_verifies_our_signature(ssh_keygen: str, tmp_path: Path, which: str) -> None:
    private = ed25519_key("interop") if which == "ed25519" else p256_key("interop")
    armored = sshsig.sign(private, MESSAGE, namespace=ORDER_NAMESPACE)
    public = sshsig.parse(armored).public_key
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'exec@custos namespaces="{ORDER_NAMESPACE}" {public.to_openssh()}\n')
    sig = tmp_path / "m.sig"
    sig.write_text(armored)
    args = (ssh_keygen, "-Y", "verify", "-f", str(allowed), "-I", "exec@custos", "-s", str(sig))
    good = _run(*args, "-n", ORDER_NAMESPACE, stdin=MESSAGE)
    assert good.returncode == 0, good.stderr
    assert _run(*args, "-n", ORDER_NAMESPACE, stdin=MESSAGE + b"x").returncode != 0
    assert _run(*args, "-n", "file", stdin=MESSAGE).returncode != 0


def test_order_signed_offline_with_ssh_keygen_verifies(ssh_keygen: str, keys: dict[str, Any]) -> None:
    """The documented offline flow: export the signature input, ``ssh-keygen -Y sign -n custos-order``."""
    ed_pub, ec_pub = keys["ed"][1], keys["ec"][1]
    signer_keys = [s.key for s in ED25519_SIGNERS[:3]]
    signer_keys += [SignerKey.from_openssh(ed_pub, name="exec4"), SignerKey.from_openssh(ec_pub, name="exec5")]
    signer_set = SignerSet.bootstrap(signer_keys, thresholds=DEV_THRESHOLDS)
    order = make_order("destroy")
    message = order.signature_input()
    sigs = [order.sign(ED25519_SIGNERS[0].private_key), order.sign(ED25519_SIGNERS[1].private_key)]  # type: ignore[arg-type]
    for name, signer_key in (("ed", signer_keys[3]), ("ec", signer_keys[4])):
        armored = ssh_sign(ssh_keygen, keys[name][0], message, keys["dir"], namespace=ORDER_NAMESPACE)
        sigs.append(Signature(signer_key.key_id, armored))
    v = verify_order(order.encode(), sigs, signer_set, now=NOW, state=default_state())
    assert v, v.failures
    assert len(v.valid) == 4
    # Signed in the default namespace ("file") instead: not an order signature.
    wrong = ssh_sign(ssh_keygen, keys["ed"][0], message, keys["dir"], namespace="file")
    v = verify_order(
        order.encode(),
        [sigs[0], sigs[1], sigs[3], Signature(signer_keys[3].key_id, wrong)],
        signer_set,
        now=NOW,
        state=default_state(),
    )
    assert v.reasons == [OrderReason.THRESHOLD_NOT_MET] and signer_keys[3].key_id in v.invalid


def test_documented_shell_recipe_writes_the_signature_input(ssh_keygen: str, keys: dict[str, Any]) -> None:
    """docs/orders.md: printf the prefix, append the body, ssh-keygen -Y sign -n custos-order."""
    directory: Path = keys["dir"]
    order = make_order("halt")
    (directory / "order.json").write_bytes(order.encode())
    script = "printf 'custos.v1.order\\0' > order.input && cat order.json >> order.input"
    result = subprocess.run(["sh", "-c", script], cwd=directory, capture_output=True, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (directory / "order.input").read_bytes() == order.signature_input()
    signed = _run(
        ssh_keygen, "-Y", "sign", "-n", ORDER_NAMESPACE, "-f", str(keys["ed"][0]), str(directory / "order.input")
    )
    assert signed.returncode == 0, signed.stderr
    key = SignerKey.from_openssh(keys["ed"][1], name="exec1")
    assert (
        key.verify((directory / "order.input.sig").read_text(), order.signature_input(), namespace=ORDER_NAMESPACE)
        is None
    )


# -- recorded ssh-keygen vectors -------------------------------------------------------


def load_vectors() -> list[dict[str, Any]]:
    if not VECTORS_FILE.exists():
        return []  # test_recorded_vectors_present fails instead
    return list(json.loads(VECTORS_FILE.read_text())["signatures"])


def test_recorded_vectors_present() -> None:
    names = {v["name"] for v in load_vectors()}
    assert {"ssh-keygen-ed25519-sha512", "ssh-keygen-ed25519-sha256", "ssh-keygen-ecdsa-p256-sha512"} <= names


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda v: v["name"])
def test_recorded_ssh_keygen_vectors(vector: dict[str, Any]) -> None:
    message = bytes.fromhex(vector["message_hex"])
    assert message == MESSAGE, "vectors sign the halt order's signature input"
    public = sshsig.SshPublicKey.from_openssh(vector["public_key"])
    sig = sshsig.verify(vector["signature"], message, namespace=vector["namespace"], public_key=public)
    assert sig.hash_algorithm == vector["hash_algorithm"]
    with pytest.raises(sshsig.SshSigError):
        sshsig.verify(vector["signature"], message + b"\n", namespace=vector["namespace"], public_key=public)
    # And through an order verification, as an executive's SSH key in a signer set.
    key = SignerKey.from_openssh(vector["public_key"], name="exec-ssh")
    signer_set = SignerSet.bootstrap(
        [key, *(s.key for s in ED25519_SIGNERS[:2])], thresholds=dict(DEV_THRESHOLDS, halt=3, destroy=3, rotate=3)
    )
    order = make_order("halt")
    sigs = [Signature(key.key_id, vector["signature"]), *(order.sign(s.private_key) for s in ED25519_SIGNERS[:2])]  # type: ignore[arg-type]
    assert verify_order(order.encode(), sigs, signer_set, now=NOW, state=default_state())


def record_vectors() -> None:
    """Sign MESSAGE with fresh ssh-keygen keys and write vectors/sshsig.json."""
    import tempfile

    tool = _ssh_keygen()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name, keytype, hashalg in (
            ("ssh-keygen-ed25519-sha512", "ed25519", ""),
            ("ssh-keygen-ed25519-sha256", "ed25519", "sha256"),
            ("ssh-keygen-ecdsa-p256-sha512", "ecdsa", ""),
        ):
            key, pub = keygen(tool, directory, name, keytype)
            armored = ssh_sign(tool, key, MESSAGE, directory, namespace=ORDER_NAMESPACE, hashalg=hashalg)
            out.append(
                {
                    "name": name,
                    "public_key": " ".join(pub.split()[:2]),
                    "namespace": ORDER_NAMESPACE,
                    "hash_algorithm": hashalg or "sha512",
                    "message_hex": MESSAGE.hex(),
                    "signature": armored,
                }
            )
    doc = {
        "description": "Signatures made by OpenSSH ssh-keygen -Y sign -n custos-order over the signature "
        "input of the halt order vector (vectors/orders.json); keys were generated for the recording "
        "and discarded.",
        "signatures": out,
    }
    VECTORS_FILE.write_text(json.dumps(doc, indent=2) + "\n")


# -- FIDO security keys (simulated token) ---------------------------------------------------


@pytest.mark.parametrize("which", ["ed25519", "p256"])
def test_security_key_signature(which: str) -> None:
    private = ed25519_key("token") if which == "ed25519" else p256_key("token")
    armored = sk_sign(private, "ssh:", MESSAGE, namespace=ORDER_NAMESPACE)
    parsed = sshsig.parse(armored)
    assert parsed.public_key.is_security_key and parsed.sk_flags == sshsig.SK_USER_PRESENT
    key = parsed.public_key
    assert sshsig.verify(armored, MESSAGE, namespace=ORDER_NAMESPACE, public_key=key).sk_counter == 7

    # No touch: refused unless the caller explicitly does not require presence.
    untouched = sk_sign(private, "ssh:", MESSAGE, namespace=ORDER_NAMESPACE, flags=0)
    with pytest.raises(sshsig.SshSigError, match="user presence"):
        sshsig.verify(untouched, MESSAGE, namespace=ORDER_NAMESPACE, public_key=key)
    sshsig.verify(untouched, MESSAGE, namespace=ORDER_NAMESPACE, public_key=key, require_user_presence=False)

    # Another application is another key.
    other_app = sk_sign(private, "ssh:other", MESSAGE, namespace=ORDER_NAMESPACE)
    with pytest.raises(sshsig.SshSigError, match="different key"):
        sshsig.verify(other_app, MESSAGE, namespace=ORDER_NAMESPACE, public_key=key)

    # The counter and flags are signed: editing them breaks the signature.
    for offset in (-1, -5):  # last byte of the counter, the flags byte
        blob = bytearray(sshsig.dearmor(armored))
        blob[offset] ^= 0x02
        with pytest.raises(sshsig.SshSigError, match="does not verify"):
            sshsig.verify(sshsig.armor(bytes(blob)), MESSAGE, namespace=ORDER_NAMESPACE, public_key=key)


def test_security_key_signer_key_roundtrip() -> None:
    armored = sk_sign(ed25519_key("token"), "ssh:", MESSAGE, namespace=ORDER_NAMESPACE)
    public = sshsig.parse(armored).public_key
    line = public.to_openssh("alice@token")
    assert line.startswith("sk-ssh-ed25519@openssh.com AAAA")
    key = SignerKey.from_openssh(line, name="alice")
    assert key.keytype == "sk-ed25519" and key.application == "ssh:"
    assert key.verify(armored, MESSAGE, namespace=ORDER_NAMESPACE) is None
    # A token never makes a raw Ed25519 signature.
    raw = ed25519_key("token").sign(MESSAGE).hex()
    assert key.verify(raw, MESSAGE, namespace=ORDER_NAMESPACE) is not None


# -- strict parsing ------------------------------------------------------------------------


def _blob(**parts: bytes) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    pub = sshsig.SshPublicKey.from_ed25519(ed25519_key("p").public_key())
    fields = {
        "magic": b"SSHSIG",
        "version": struct.pack(">I", 1),
        "publickey": s(pub.blob()),
        "namespace": s(ORDER_NAMESPACE.encode()),
        "reserved": s(b""),
        "hash": s(b"sha512"),
        "signature": s(s(b"ssh-ed25519") + s(bytes(64))),
        "trailer": b"",
    }
    fields.update(parts)
    return b"".join(fields.values())


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


@pytest.mark.parametrize(
    ("name", "blob", "match"),
    [
        ("bad-magic", _blob(magic=b"SSHSIH"), "magic"),
        ("version-2", _blob(version=struct.pack(">I", 2)), "version"),
        ("reserved-not-empty", _blob(reserved=_s(b"x")), "reserved"),
        ("md5", _blob(hash=_s(b"md5")), "hash algorithm"),
        ("trailing-data", _blob(trailer=b"\x00"), "trailing"),
        ("truncated", _blob()[:-10], "truncated"),
        ("sig-type-mismatch", _blob(signature=_s(_s(b"ecdsa-sha2-nistp256") + _s(bytes(64)))), "type"),
        ("short-ed25519-sig", _blob(signature=_s(_s(b"ssh-ed25519") + _s(bytes(63)))), "64 bytes"),
        ("rsa-key", _blob(publickey=_s(_s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(bytes(256)))), "unsupported"),
        (
            "certificate",
            _blob(publickey=_s(_s(b"ssh-ed25519-cert-v01@openssh.com") + _s(bytes(32)))),
            "unsupported",
        ),
        ("short-key", _blob(publickey=_s(_s(b"ssh-ed25519") + _s(bytes(31)))), "32 bytes"),
    ],
)
def test_parser_refuses(name: str, blob: bytes, match: str) -> None:
    with pytest.raises(sshsig.SshSigError, match=match):
        sshsig.parse(sshsig.armor(blob))


def test_armor_rules() -> None:
    armored = sshsig.sign(ed25519_key("a"), MESSAGE, namespace=ORDER_NAMESPACE)
    assert sshsig.parse(armored.replace("\n", "\r\n")).namespace == ORDER_NAMESPACE  # CRLF is fine
    assert sshsig.parse(armored.rstrip("\n")).namespace == ORDER_NAMESPACE  # so is no final newline
    lines = armored.splitlines()
    assert all(len(line) <= sshsig.ARMOR_LINE for line in lines)
    rewrapped = "\n".join([lines[0], "".join(lines[1:-1]), lines[-1]])
    assert sshsig.parse(rewrapped)
    refused = {
        "leading-space": " " + armored,
        "space-in-body": armored.replace("\n", " \n", 2),
        "blank-line": armored.replace("\n", "\n\n", 1),
        "text-after": armored + "trailing\n",
        "no-end": "\n".join(lines[:-1]),
        "other-armor": armored.replace("SSH SIGNATURE", "PGP SIGNATURE"),
        "not-ascii": armored.replace("A", "Ä", 1),
        "too-large": lines[0] + "\n" + "A" * sshsig.MAX_ARMORED + "\n" + lines[-1],
        "empty": "",
    }
    for label, text in refused.items():
        with pytest.raises(sshsig.SshSigError):
            sshsig.parse(text)
        assert label
    # Base64 with non-zero padding bits decodes to the same bytes; it is refused so
    # that one signature has one accepted text.
    body = "".join(lines[1:-1])
    assert body.endswith("=")
    pad = len(body) - len(body.rstrip("="))
    last = body[-pad - 1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sloppy = body[: -pad - 1] + alphabet[alphabet.index(last) + 1] + "=" * pad
    assert base64.b64decode(sloppy) == base64.b64decode(body)
    with pytest.raises(sshsig.SshSigError, match="non-canonical"):
        sshsig.parse("\n".join([lines[0], sloppy, lines[-1]]))


def test_public_key_parsing() -> None:
    ed = sshsig.SshPublicKey.from_ed25519(ed25519_key("k").public_key())
    assert sshsig.SshPublicKey.from_openssh(ed.to_openssh("comment with spaces")) == ed
    ec_key = sshsig.SshPublicKey.from_ecdsa(p256_key("k").public_key())
    assert sshsig.SshPublicKey.from_openssh(ec_key.to_openssh()) == ec_key
    with pytest.raises(sshsig.SshKeyError, match="does not match"):
        sshsig.SshPublicKey.from_openssh("ecdsa-sha2-nistp256 " + ed.to_openssh().split()[1])
    with pytest.raises(sshsig.SshKeyError, match="base64"):
        sshsig.SshPublicKey.from_openssh("ssh-ed25519 ***")
    with pytest.raises(sshsig.SshKeyError):
        sshsig.SshPublicKey.from_openssh("ssh-ed25519")
    compressed = p256_key("k").public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    with pytest.raises(sshsig.SshKeyError, match="uncompressed"):
        sshsig.SshPublicKey(sshsig.KEY_ECDSA_P256, compressed)
    with pytest.raises(sshsig.SshKeyError, match="not a point"):
        sshsig.SshPublicKey(sshsig.KEY_ECDSA_P256, b"\x04" + bytes(64))
    with pytest.raises(sshsig.SshKeyError, match="application"):
        sshsig.SshPublicKey(sshsig.KEY_SK_ED25519, bytes(32))
    with pytest.raises(sshsig.SshKeyError, match="no application"):
        sshsig.SshPublicKey(sshsig.KEY_ED25519, bytes(32), "ssh:")
    with pytest.raises(sshsig.SshKeyError):
        sshsig.SshPublicKey.from_ecdsa(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_sign_refuses_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        sshsig.sign(ed25519_key("a"), MESSAGE, namespace="")
    with pytest.raises(InvalidInput):
        sshsig.sign(ed25519_key("a"), MESSAGE, namespace=ORDER_NAMESPACE, hash_algorithm="md5")
    with pytest.raises(InvalidInput):
        sshsig.sign(ec.derive_private_key(5, ec.SECP384R1()), MESSAGE, namespace=ORDER_NAMESPACE)
    with pytest.raises(sshsig.SshSigError):
        sshsig.verify(sshsig.sign(ed25519_key("a"), MESSAGE, namespace="x"), MESSAGE, namespace="")
    assert issubclass(sshsig.SshSigError, IntegrityError)


def test_our_signatures_are_deterministic() -> None:
    a = sshsig.sign(p256_key("d"), MESSAGE, namespace=ORDER_NAMESPACE)
    assert a == sshsig.sign(p256_key("d"), MESSAGE, namespace=ORDER_NAMESPACE)
    assert sshsig.verify(a, MESSAGE, namespace=ORDER_NAMESPACE).signature_type == sshsig.KEY_ECDSA_P256


if __name__ == "__main__":
    if sys.argv[1:] == ["--record-vectors"]:
        record_vectors()
        print(f"wrote {VECTORS_FILE}")
    else:
        print("usage: python -m tests.core.test_sshsig --record-vectors")
