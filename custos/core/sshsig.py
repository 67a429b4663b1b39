"""OpenSSH signatures (``SSHSIG``): parse, verify and — for software keys — make them.

``ssh-keygen -Y sign -n NAMESPACE -f KEY FILE`` writes ``FILE.sig``, an armored
blob (openssh PROTOCOL.sshsig)::

    -----BEGIN SSH SIGNATURE-----
    base64( "SSHSIG" || uint32 1 || string publickey || string namespace ||
            string reserved || string hash_algorithm || string signature )
    -----END SSH SIGNATURE-----

The key signs not the file but ``"SSHSIG" || string namespace || string reserved
|| string hash_algorithm || string H(file)``, so a signature made for one
namespace never verifies in another. Executives can therefore sign orders
offline with the tool they already have, including hardware tokens (FIDO
``sk-`` keys), and Custos verifies the result here with ``cryptography``.

Supported keys: ``ssh-ed25519``, ``sk-ssh-ed25519@openssh.com``,
``ecdsa-sha2-nistp256`` and ``sk-ecdsa-sha2-nistp256@openssh.com``. RSA, DSA,
certificates and webauthn signatures are refused. Hash algorithms: sha256 and
sha512. For ``sk-`` keys the token's "user present" flag is required by default.

Pure logic: no file system, no subprocess.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custos.errors import IntegrityError, InvalidInput

MAGIC = b"SSHSIG"
SIG_VERSION = 1
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
ARMOR_LINE = 70  # what ssh-keygen writes; any wrapping is accepted on input
MAX_ARMORED = 16 * 1024  # a P-256 sk signature is under 1 KiB; bound the parser's work
HASH_ALGORITHMS = ("sha256", "sha512")

KEY_ED25519 = "ssh-ed25519"
KEY_SK_ED25519 = "sk-ssh-ed25519@openssh.com"
KEY_ECDSA_P256 = "ecdsa-sha2-nistp256"
KEY_SK_ECDSA_P256 = "sk-ecdsa-sha2-nistp256@openssh.com"
KEY_TYPES = (KEY_ED25519, KEY_SK_ED25519, KEY_ECDSA_P256, KEY_SK_ECDSA_P256)
SK_KEY_TYPES = (KEY_SK_ED25519, KEY_SK_ECDSA_P256)
_CURVE_NAME = b"nistp256"
_MAX_APPLICATION = 256

# FIDO authenticator-data flags (openssh sk-api.h).
SK_USER_PRESENT = 0x01
SK_USER_VERIFIED = 0x04


class SshSigError(IntegrityError):
    """An SSH signature is malformed, unsupported, or does not verify."""


class SshKeyError(InvalidInput):
    """An SSH public key is malformed or of an unsupported type."""


# -- SSH wire format (RFC 4251 §5) ---------------------------------------------


class _Reader:
    """Reads SSH wire types; every short read or trailing byte is an error."""

    def __init__(self, data: bytes, error: type[Exception]) -> None:
        self._data = data
        self._pos = 0
        self._error = error

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self._error("truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        raw = self.string()
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self._error("non-ASCII name") from None

    def mpint(self) -> int:
        raw = self.string()
        if not raw:
            return 0
        if raw[0] & 0x80:
            raise self._error("negative mpint")
        if len(raw) > 1 and raw[0] == 0 and not raw[1] & 0x80:
            raise self._error("mpint with a needless leading zero")
        return int.from_bytes(raw, "big")

    def done(self) -> None:
        if self._pos != len(self._data):
            raise self._error("trailing data")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(n: int) -> bytes:
    if n == 0:
        return _string(b"")
    # One extra bit of room gives the leading zero byte a positive number needs
    # when its top bit is set.
    return _string(n.to_bytes((n.bit_length() + 8) // 8, "big"))


# -- public keys -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SshPublicKey:
    """An SSH public key: ``keytype`` (wire name), the raw public point, and for
    ``sk-`` keys the FIDO application string (usually ``"ssh:"``).

    ``public`` is 32 bytes for Ed25519 and the 65-byte uncompressed SEC1 point
    for P-256. Raises SshKeyError when constructed with anything else.
    """

    keytype: str
    public: bytes
    application: str | None = None

    def __post_init__(self) -> None:
        if self.keytype not in KEY_TYPES:
            raise SshKeyError(f"unsupported SSH key type {self.keytype[:64]!r}")
        if not isinstance(self.public, bytes):
            raise SshKeyError("public key must be bytes")
        if self.keytype in (KEY_ED25519, KEY_SK_ED25519):
            if len(self.public) != 32:
                raise SshKeyError("Ed25519 public key must be 32 bytes")
        else:
            # Only the uncompressed form, so one key has one encoding (and one key id).
            if len(self.public) != 65 or self.public[0] != 0x04:
                raise SshKeyError("P-256 public key must be a 65-byte uncompressed point")
            try:
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.public)
            except ValueError:
                raise SshKeyError("P-256 public key is not a point on the curve") from None
        if self.keytype in SK_KEY_TYPES:
            app = self.application
            if not isinstance(app, str) or not 0 < len(app) <= _MAX_APPLICATION or not app.isascii():
                raise SshKeyError("security-key application must be 1-256 ASCII characters")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in app):
                raise SshKeyError("security-key application contains a control character")
        elif self.application is not None:
            raise SshKeyError(f"{self.keytype} keys have no application")

    @property
    def algorithm(self) -> str:
        """The key pair's algorithm, whatever way it signs: ``ed25519`` or ``ecdsa-p256``."""
        return "ed25519" if self.keytype in (KEY_ED25519, KEY_SK_ED25519) else "ecdsa-p256"

    @property
    def is_security_key(self) -> bool:
        return self.keytype in SK_KEY_TYPES

    def blob(self) -> bytes:
        """The SSH wire encoding (what ``AAAA...`` in a .pub file is the base64 of)."""
        out = _string(self.keytype.encode())
        if self.algorithm == "ecdsa-p256":
            out += _string(_CURVE_NAME)
        out += _string(self.public)
        if self.application is not None:
            out += _string(self.application.encode())
        return out

    def to_openssh(self, comment: str = "") -> str:
        """The one-line ``authorized_keys`` / ``.pub`` form."""
        line = f"{self.keytype} {base64.b64encode(self.blob()).decode()}"
        return f"{line} {comment}" if comment else line

    @classmethod
    def from_blob(cls, blob: bytes) -> SshPublicKey:
        """Parse the SSH wire encoding. Raises SshKeyError."""
        r = _Reader(blob, SshKeyError)
        keytype = r.text()
        if keytype not in KEY_TYPES:
            raise SshKeyError(f"unsupported SSH key type {keytype[:64]!r}")
        if keytype in (KEY_ECDSA_P256, KEY_SK_ECDSA_P256) and r.string() != _CURVE_NAME:
            raise SshKeyError("ECDSA key is not on nistp256")
        public = r.string()
        application = r.text() if keytype in SK_KEY_TYPES else None
        r.done()
        return cls(keytype=keytype, public=public, application=application)

    @classmethod
    def from_openssh(cls, line: str) -> SshPublicKey:
        """Parse ``"<type> <base64> [comment]"``. Raises SshKeyError.

        The leading type must name the same type as the encoded blob.
        """
        if not isinstance(line, str) or len(line) > 8192:
            raise SshKeyError("not an OpenSSH public key line")
        parts = line.strip().split(None, 2)
        if len(parts) < 2:
            raise SshKeyError("want '<key type> <base64> [comment]'")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise SshKeyError("public key is not valid base64") from None
        key = cls.from_blob(blob)
        if key.keytype != parts[0]:
            raise SshKeyError("key type label does not match the encoded key")
        return key

    @classmethod
    def from_ed25519(cls, public_key: Ed25519PublicKey) -> SshPublicKey:
        return cls(KEY_ED25519, public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def from_ecdsa(cls, public_key: ec.EllipticCurvePublicKey) -> SshPublicKey:
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise SshKeyError("only P-256 ECDSA keys are supported")
        return cls(KEY_ECDSA_P256, public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


# -- signatures ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SshSignature:
    """A parsed (not yet verified) SSHSIG blob."""

    public_key: SshPublicKey
    namespace: str
    hash_algorithm: str
    signature_type: str
    signature: bytes  # Ed25519: the 64-byte signature; ECDSA: mpint r || mpint s
    sk_flags: int | None
    sk_counter: int | None


def armor(blob: bytes) -> str:
    """Armor a raw SSHSIG blob exactly as ssh-keygen does."""
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + ARMOR_LINE] for i in range(0, len(text), ARMOR_LINE)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n"


def dearmor(armored: str | bytes) -> bytes:
    """The raw blob inside an armored signature. Raises SshSigError.

    Accepts LF or CRLF line ends and any line wrapping, but no other
    whitespace, text outside the armor, or non-canonical base64 (padding bits
    must be zero) — so one blob has exactly one accepted text per wrapping.
    """
    if isinstance(armored, bytes):
        try:
            armored = armored.decode("ascii")
        except UnicodeDecodeError:
            raise SshSigError("SSH signature: not ASCII") from None
    if not isinstance(armored, str):
        raise SshSigError("SSH signature: want text")
    if len(armored) > MAX_ARMORED:
        raise SshSigError("SSH signature: too large")
    lines = armored.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # one final newline, as ssh-keygen writes
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise SshSigError("SSH signature: missing BEGIN/END SSH SIGNATURE armor")
    body = "".join(lines[1:-1])
    if not body or any(not line for line in lines[1:-1]):
        raise SshSigError("SSH signature: empty line inside the armor")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SshSigError("SSH signature: not valid base64") from None
    if base64.b64encode(blob).decode() != body:
        raise SshSigError("SSH signature: non-canonical base64")
    return blob


def parse(armored: str | bytes) -> SshSignature:
    """Parse an armored SSHSIG signature without verifying it. Raises SshSigError."""
    blob = dearmor(armored)
    r = _Reader(blob, SshSigError)
    if r.take(len(MAGIC)) != MAGIC:
        raise SshSigError("SSH signature: bad magic")
    version = r.u32()
    if version != SIG_VERSION:
        raise SshSigError(f"SSH signature: unsupported version {version}")
    key_blob = r.string()
    namespace = r.text()
    reserved = r.string()
    hash_algorithm = r.text()
    sig_blob = r.string()
    r.done()
    if reserved:
        raise SshSigError("SSH signature: reserved field is not empty")
    if hash_algorithm not in HASH_ALGORITHMS:
        raise SshSigError(f"SSH signature: unsupported hash algorithm {hash_algorithm[:32]!r}")
    try:
        public_key = SshPublicKey.from_blob(key_blob)
    except SshKeyError as exc:
        raise SshSigError(f"SSH signature: {exc}") from None

    s = _Reader(sig_blob, SshSigError)
    signature_type = s.text()
    if signature_type != public_key.keytype:  # no RSA, so the names coincide
        raise SshSigError("SSH signature: signature type does not match the key type")
    signature = s.string()
    sk_flags = sk_counter = None
    if public_key.is_security_key:
        sk_flags, sk_counter = s.u8(), s.u32()
    s.done()
    if public_key.algorithm == "ed25519" and len(signature) != 64:
        raise SshSigError("SSH signature: Ed25519 signature must be 64 bytes")
    return SshSignature(
        public_key=public_key,
        namespace=namespace,
        hash_algorithm=hash_algorithm,
        signature_type=signature_type,
        signature=signature,
        sk_flags=sk_flags,
        sk_counter=sk_counter,
    )


def signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """What the key actually signs for ``message`` in ``namespace`` (PROTOCOL.sshsig)."""
    digest = hashlib.new(hash_algorithm, message).digest()
    return MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_algorithm.encode()) + _string(digest)


def sk_signed_data(application: str, flags: int, counter: int, data: bytes) -> bytes:
    """What a FIDO token signs over ``data`` (openssh PROTOCOL.u2f).

    Ed25519 tokens sign these bytes directly; P-256 tokens sign their SHA-256.
    """
    return (
        hashlib.sha256(application.encode()).digest()
        + bytes([flags])
        + struct.pack(">I", counter)
        + hashlib.sha256(data).digest()
    )


def verify(
    armored: str | bytes,
    message: bytes,
    *,
    namespace: str,
    public_key: SshPublicKey | None = None,
    require_user_presence: bool = True,
) -> SshSignature:
    """Verify an armored SSHSIG signature over ``message``; return it parsed.

    ``public_key``, when given, is the key that must have signed (the
    signature's own embedded key is otherwise trusted only for the math — the
    caller must then check it). Raises SshSigError for a malformed or
    unsupported signature, a different namespace, a different key, a security
    key signature without user presence (unless ``require_user_presence`` is
    false), or a signature that does not verify.
    """
    if not namespace:
        raise SshSigError("SSH signature: namespace must not be empty")
    sig = parse(armored)
    if sig.namespace != namespace:
        raise SshSigError("SSH signature: made for a different namespace")
    if public_key is not None and sig.public_key != public_key:
        raise SshSigError("SSH signature: made by a different key")
    data = signed_data(namespace, sig.hash_algorithm, message)
    key = sig.public_key
    if key.is_security_key:
        if sig.sk_flags is None or sig.sk_counter is None or key.application is None:
            raise SshSigError("SSH signature: security key fields missing")  # parse() sets them
        if require_user_presence and not sig.sk_flags & SK_USER_PRESENT:
            raise SshSigError("SSH signature: security key did not assert user presence")
        data = sk_signed_data(key.application, sig.sk_flags, sig.sk_counter, data)
    try:
        if key.algorithm == "ed25519":
            Ed25519PublicKey.from_public_bytes(key.public).verify(sig.signature, data)
        else:
            rs = _Reader(sig.signature, SshSigError)
            r, s = rs.mpint(), rs.mpint()
            rs.done()
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public)
            point.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SshSigError("SSH signature: does not verify") from None
    except ValueError:
        # e.g. r or s out of range for DER encoding
        raise SshSigError("SSH signature: malformed signature value") from None
    return sig


def sign(
    private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    message: bytes,
    *,
    namespace: str,
    hash_algorithm: str = "sha512",
) -> str:
    """Make an armored SSHSIG signature with a software key, as ``ssh-keygen -Y sign`` does.

    Ed25519 output is deterministic; P-256 uses deterministic ECDSA (RFC 6979).
    Raises InvalidInput for an empty namespace, unknown hash or unsupported key.
    """
    if not namespace:
        raise InvalidInput("SSH signature: namespace must not be empty")
    if hash_algorithm not in HASH_ALGORITHMS:
        raise InvalidInput(f"SSH signature: unsupported hash algorithm {hash_algorithm!r}")
    data = signed_data(namespace, hash_algorithm, message)
    if isinstance(private_key, Ed25519PrivateKey):
        public = SshPublicKey.from_ed25519(private_key.public_key())
        return assemble(public, namespace, hash_algorithm, KEY_ED25519, private_key.sign(data))
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        try:
            public = SshPublicKey.from_ecdsa(private_key.public_key())
        except SshKeyError as exc:
            raise InvalidInput(str(exc)) from None
        der = private_key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return assemble(public, namespace, hash_algorithm, KEY_ECDSA_P256, ecdsa_signature_value(der))
    raise InvalidInput("SSH signature: only Ed25519 and P-256 keys can sign")


def assemble(
    public_key: SshPublicKey,
    namespace: str,
    hash_algorithm: str,
    signature_type: str,
    signature: bytes,
    sk_flags: int | None = None,
    sk_counter: int | None = None,
) -> str:
    """Armor an SSHSIG blob from its parts (for tools that sign elsewhere, e.g. a
    token driver, and for tests). Does not verify anything."""
    sig_blob = _string(signature_type.encode()) + _string(signature)
    if sk_flags is not None or sk_counter is not None:
        sig_blob += bytes([sk_flags or 0]) + struct.pack(">I", sk_counter or 0)
    blob = (
        MAGIC
        + struct.pack(">I", SIG_VERSION)
        + _string(public_key.blob())
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(sig_blob)
    )
    return armor(blob)


def ecdsa_signature_value(der: bytes) -> bytes:
    """Convert a DER ECDSA signature to the SSH ``mpint r || mpint s`` value."""
    r, s = decode_dss_signature(der)
    return _mpint(r) + _mpint(s)
