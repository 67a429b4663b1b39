"""What the commands share beyond output: the connection, durations, labels, passphrases, signer keys."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.client.connection import ClientConfig
from custos.client.session import Client
from custos.client.signerkeys import load_private_key
from custos.core import sshsig
from custos.core.signers import Signature, decode_signatures, key_id_of
from custos.errors import (
    InvalidInput,
)


def connect(ns: argparse.Namespace) -> Client:
    """A client from the connection flags over the environment. Raises InvalidInput (not configured,
    unreadable certificate or key)."""
    config = ClientConfig.from_env(addr=ns.addr, ca=ns.ca, cert=ns.tls_cert, key=ns.tls_key, role=ns.role,
                                   identity=getattr(ns, "identity", None))
    return Client(config=config, timeout=ns.timeout)


def enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", "-")


def duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise InvalidInput(f"bad duration {text!r}: want e.g. 90s, 30m, 1h, 2d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise InvalidInput(f"bad --label {item!r}: want KEY=VALUE")
        out[k] = v
    return out


def read_passphrase(ns: argparse.Namespace, *, confirm: bool = False) -> bytes | None:
    if getattr(ns, "no_passphrase", False):
        return None
    if getattr(ns, "passphrase_file", None):
        try:
            return Path(ns.passphrase_file).read_bytes().rstrip(b"\n")
        except OSError as exc:
            raise InvalidInput(f"cannot read {ns.passphrase_file}: {exc.strerror}") from None
    env = os.environ.get("CUSTOS_SIGNER_PASSPHRASE")
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        return None

    first = getpass.getpass("passphrase for the signer key (empty for none): ").encode()
    if confirm and first and getpass.getpass("again: ").encode() != first:
        raise InvalidInput("passphrases do not match")
    return first or None


def load_signer(ns: argparse.Namespace) -> Ed25519PrivateKey:
    return load_private_key(ns.key, read_passphrase(ns))


def write_exported(data: bytes, file: str | None) -> None:
    """Write a signature input for offline signing to ``file``, or to stdout."""
    if file:
        Path(file).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def read_bounded(path: str | Path, what: str, limit: int) -> bytes:
    """A file's bytes, at most ``limit`` of them (a bigger one is refused unread past the limit).
    Raises InvalidInput naming ``what``."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise InvalidInput(f"{what} {path} is larger than {limit} bytes")
    return data


def read_exported(path: str, domain: bytes, what: str) -> bytes:
    """The body of an exported signature input: the file's bytes after ``domain``.
    Raises InvalidInput (unreadable, or not ``what``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    if not data.startswith(domain):
        raise InvalidInput(f"{path} is not {what}")
    return data[len(domain):]


def read_signature_file(path: str) -> list[Signature]:
    """Signatures from a file: an armored SSHSIG (``ssh-keygen -Y sign``; its key id is
    derived from the public key inside) or a canonical signature list (``sign-file``).
    Raises InvalidInput."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith(sshsig.ARMOR_BEGIN):
        pub = sshsig.parse(text).public_key
        return [Signature(key_id=key_id_of(pub.algorithm, pub.public), sig=text)]
    return decode_signatures(raw)
