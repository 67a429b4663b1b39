"""`custos signer keygen|show|new-set|sign-set|rotate`: executive signer keys and the signer set."""

from __future__ import annotations

import argparse
from pathlib import Path

from custos.cli.common import connect, load_signer, read_passphrase
from custos.cli.output import Out, table
from custos.client.signerkeys import save_private_key
from custos.client.signersets import get_signer_set, rotate_signer_set
from custos.core.signers import (
    SignerKey,
    SignerSet,
    decode_signatures,
    encode_signatures,
    generate_ed25519,
    public_key_to_openssh,
    sign_raw,
)
from custos.errors import InvalidInput


def cmd_signer_keygen(ns: argparse.Namespace, out: Out) -> int:
    path = Path(ns.out)
    if path.exists():
        raise InvalidInput(f"{path} already exists")
    secret = read_passphrase(ns, confirm=True)
    key = generate_ed25519()
    save_private_key(path, key, secret)
    sk = SignerKey.from_ed25519(key.public_key(), name=ns.name)
    pub = path.with_suffix(".pub")
    pub.write_text(public_key_to_openssh(key, ns.name) + "\n")
    data = {"name": ns.name, "key_id": sk.key_id, "private_key": str(path), "public_key": str(pub),
            "encrypted": secret is not None, "openssh": sk.to_openssh()}
    out.emit(data, f"signer key {ns.name}: {path} ({'encrypted' if secret else 'NOT encrypted'}), "
                   f"public key {pub}\n  key id {sk.key_id}")
    return 0


def cmd_signer_show(ns: argparse.Namespace, out: Out) -> int:
    ss = SignerSet.decode(get_signer_set(connect(ns)).signer_set)
    data = {"version": ss.version, "id": ss.id, "thresholds": dict(ss.thresholds),
            "keys": [{"name": k.name, "key_id": k.key_id, "keytype": k.keytype} for k in ss.keys]}
    out.emit(data, lambda: f"signer set v{ss.version} ({ss.id[:16]})\nthresholds: "
             + ", ".join(f"{a} {t}" for a, t in ss.thresholds.items()) + "\n"
             + table([[k.name, k.keytype, k.key_id] for k in ss.keys], ["NAME", "TYPE", "KEY ID"]))
    return 0


def cmd_signer_new_set(ns: argparse.Namespace, out: Out) -> int:
    """Write version n+1 of the signer set (unsigned) for executives to review and sign."""
    current = SignerSet.decode(get_signer_set(connect(ns)).signer_set)
    keys = {k.name: k for k in current.keys}
    for name in ns.remove or []:
        if keys.pop(name, None) is None:
            raise InvalidInput(f"no signer named {name!r} in version {current.version}")
    for item in ns.add or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise InvalidInput(f"bad --add {item!r}: want NAME=PUBLIC_KEY_FILE (OpenSSH format)")
        try:
            keys[name] = SignerKey.from_openssh(Path(path).read_text().strip(), name=name)
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    thresholds = dict(current.thresholds)
    for item in ns.threshold or []:
        action, sep, n = item.partition("=")
        if not sep or not n.isdigit():
            raise InvalidInput(f"bad --threshold {item!r}: want ACTION=N")
        thresholds[action] = int(n)
    new = current.successor(list(keys.values()), thresholds=thresholds)
    Path(ns.out).write_bytes(new.encode())
    out.emit({"version": new.version, "file": ns.out, "keys": sorted(keys), "thresholds": thresholds},
             f"signer set v{new.version} written to {ns.out}: keys {', '.join(sorted(keys))}; "
             + ", ".join(f"{a} {t}" for a, t in sorted(thresholds.items())))
    return 0


def cmd_signer_sign_set(ns: argparse.Namespace, out: Out) -> int:
    try:
        new = SignerSet.decode(Path(ns.file).read_bytes())
    except OSError as exc:
        raise InvalidInput(f"cannot read {ns.file}: {exc.strerror}") from None
    sig = sign_raw(load_signer(ns), new.signature_input())
    target = Path(ns.out or f"{ns.file}.{sig.key_id[:12]}.sig.json")
    target.write_bytes(encode_signatures([sig]))
    out.emit({"key_id": sig.key_id, "signature_file": str(target), "version": new.version},
             f"signed signer set v{new.version}: {target}")
    return 0


def cmd_signer_rotate(ns: argparse.Namespace, out: Out) -> int:
    try:
        new_bytes = Path(ns.file).read_bytes()
        sigs = [s for f in ns.sig for s in decode_signatures(Path(f).read_bytes())]
    except OSError as exc:
        raise InvalidInput(f"cannot read a file: {exc.strerror}") from None
    ss = SignerSet.decode(rotate_signer_set(connect(ns), new_bytes, sigs).signer_set)
    out.emit({"version": ss.version, "id": ss.id}, f"signer set rotated to v{ss.version} ({ss.id[:16]})")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sg = sub.add_parser("signer", help="executive signer keys and the signer set").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    sk = sg.add_parser("keygen", parents=[common], help="make an Ed25519 signer key (encrypted with a passphrase)")
    sk.add_argument("out", help="private key file to write (the public key goes to OUT.pub)")
    sk.add_argument("--name", required=True, help="signer name in the signer set, e.g. exec1")
    sk.add_argument("--passphrase-file", help="a file holding the new key's passphrase (default: ask)")
    sk.add_argument("--no-passphrase", action="store_true", help="leave the key unencrypted (not recommended)")
    sk.set_defaults(fn=cmd_signer_keygen)
    ssh_ = sg.add_parser("show", parents=[common], help="the current signer set")
    ssh_.set_defaults(fn=cmd_signer_show)
    sn = sg.add_parser("new-set", parents=[common], help="write version n+1 (unsigned) for review")
    sn.add_argument("--out", required=True, help="where to write the unsigned signer set")
    sn.add_argument("--add", action="append", help="NAME=OPENSSH_PUBLIC_KEY_FILE")
    sn.add_argument("--remove", action="append", help="signer name to drop")
    sn.add_argument("--threshold", action="append", help="ACTION=N (drill, halt, lift, destroy, rotate)")
    sn.set_defaults(fn=cmd_signer_new_set)
    sss = sg.add_parser("sign-set", parents=[common], help="sign a new signer set (old and new signers both do)")
    sss.add_argument("file", help="the signer set file to sign")
    sss.add_argument("--key", required=True, help="your signer key file")
    sss.add_argument("--out", help="the signature file (default FILE.sig.json)")
    sss.add_argument("--passphrase-file", help="a file with the key's passphrase")
    sss.set_defaults(fn=cmd_signer_sign_set)
    sr = sg.add_parser("rotate", parents=[common], help="install a new signer set with its signatures")
    sr.add_argument("file", help="the signed signer set file (with its signatures)")
    sr.add_argument("--sig", action="append", required=True, help="signature file (repeat)")
    sr.set_defaults(fn=cmd_signer_rotate)
