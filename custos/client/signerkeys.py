"""Signer key files: an executive's Ed25519 private key on disk, readable only by its owner."""

from __future__ import annotations

import os
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.core.keymaterial import zeroize
from custos.core.signers import KeyFileError, private_key_from_pem, private_key_pem
from custos.errors import Conflict, NotFound
from custos.fs.private import write_private

MAX_KEY_FILE = 64 * 1024


def save_private_key(path: str | os.PathLike[str], key: Ed25519PrivateKey, passphrase: bytes | None) -> None:
    """Write ``key`` as PKCS#8 PEM to a new file readable only by its owner (0600).

    Encrypted with ``passphrase`` when one is given. Never overwrites: raises Conflict
    if ``path`` exists (a signer's key is not replaced by accident); InvalidInput for
    an empty passphrase.
    """
    pem = private_key_pem(key, passphrase)
    try:
        write_private(path, pem, exclusive=True)
    except FileExistsError:
        raise Conflict("private key file already exists") from None
    finally:
        zeroize(pem)


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key: PKCS#8 PEM (as save_private_key writes) or an
    unencrypted OpenSSH private key.

    Raises NotFound if there is no file; KeyFileError if others can read or
    write it (as ssh does), if the passphrase is wrong or missing, or if it is
    not an Ed25519 key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound("private key file not found") from None
    data = bytearray()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError("private key path is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError("private key file is accessible by others; chmod 600 it")
        while chunk := os.read(fd, 65536):
            data += chunk
            if len(data) > MAX_KEY_FILE:
                raise KeyFileError("private key file is too large")
        return private_key_from_pem(data, passphrase)
    finally:
        os.close(fd)
        zeroize(data)


def dev_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """DEVELOPMENT ONLY: the unencrypted Ed25519 key at ``path``, made there first if absent.
    Raises KeyFileError, Conflict."""
    if os.path.exists(path):
        return load_private_key(path, None)
    key = Ed25519PrivateKey.generate()
    save_private_key(path, key, None)
    return key
