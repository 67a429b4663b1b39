"""S3 credentials from boto3's default chain, against a real SeaweedFS.

When the configuration names no keys, the S3 store takes its credentials where
operators keep them on EC2/EKS: the environment, the shared config and
credentials files (profiles, ``credential_process``), container credentials (ECS,
EKS Pod Identity) and instance metadata. Every source here is exercised for real:
SeaweedFS checks the signature made with what the chain resolved. Nothing leaves
loopback: the instance-metadata provider is off (``AWS_EC2_METADATA_DISABLED``),
``~`` and the shared files point into the test's directory, and the container
credentials endpoint is a loopback HTTP server speaking the agent's protocol
(``AWS_CONTAINER_CREDENTIALS_FULL_URI`` + ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``),
handing out SeaweedFS's real identities.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from custos.blobs.base import BlobStore
from custos.blobs.url import open_blob_store
from custos.errors import BackendUnavailable, CustosError, InvalidInput, Unauthorized
from tests.servers.seaweedfs import S3Identity, SeaweedFS

pytestmark = pytest.mark.backend

BOGUS = S3Identity("bogus", "AKIDBOGUS0000000000", "bogus-secret-" + "0" * 27)


@pytest.fixture
def aws_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credential of the machine or the runner reaches the test; nothing goes past loopback."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "CUSTOS_S3_", "BOTO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "boto.cfg"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    return tmp_path


def url_of(server: SeaweedFS) -> str:
    return f"s3://{server.bucket}/cred-{uuid.uuid4().hex[:10]}?endpoint={server.endpoint_url}"


def round_trip(store: BlobStore) -> None:
    """What the control plane, agents and pushers do: check, write, read, list, delete."""
    store.check()
    info = store.put("artifacts/a/000000", b"ciphertext bytes")
    assert store.read_range("artifacts/a/000000", 0, 16) == b"ciphertext bytes"
    assert [o.key for o in store.list("artifacts/")] == ["artifacts/a/000000"]
    assert store.head("artifacts/a/000000") == info
    store.delete("artifacts/a/000000")
    assert store.list("artifacts/") == []


def write_credentials_file(path: Path, profiles: dict[str, S3Identity], *, config: bool = False) -> None:
    lines = []
    for name, ident in profiles.items():
        header = name if not config or name == "default" else f"profile {name}"
        lines += [f"[{header}]", f"aws_access_key_id = {ident.access_key}",
                  f"aws_secret_access_key = {ident.secret_key}", ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)


def credential_process(home: Path, ident: S3Identity, *, fail: bool = False) -> str:
    """A credential_process helper printing ``ident`` as the AWS CLI's process-credentials JSON."""
    script = home / "creds.py"
    out = {"Version": 1, "AccessKeyId": ident.access_key, "SecretAccessKey": ident.secret_key}
    if fail:
        script.write_text(f"import sys\nsys.stderr.write('vault said: {ident.secret_key}')\nsys.exit(3)\n")
    else:
        script.write_text(f"import json\nprint(json.dumps({out!r}))\n")
    return f"{sys.executable} {script}"


class CredentialsEndpoint:
    """A loopback endpoint of the container-credentials protocol (the ECS agent's, EKS Pod Identity's).

    Serves ``identities`` in turn, each valid for ``valid_s`` seconds, to requests that carry
    ``auth_token``; ``failing`` makes it answer 500. ``fetches`` counts answered requests.
    """

    def __init__(self, identities: list[S3Identity], *, auth_token: str, valid_s: float = 60.0) -> None:
        self.identities = identities
        self.auth_token = auth_token
        self.valid_s = valid_s
        self.failing = False
        self.fetches = 0
        self.refused = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if endpoint.failing:
                    self._answer(500, b"{}")
                    return
                if self.headers.get("Authorization") != endpoint.auth_token:
                    endpoint.refused += 1
                    self._answer(401, b"{}")
                    return
                ident = endpoint.identities[endpoint.fetches % len(endpoint.identities)]
                endpoint.fetches += 1
                expires = time.gmtime(time.time() + endpoint.valid_s)
                # SeaweedFS's static identities carry no session token; AWS's always do.
                self._answer(200, json.dumps({
                    "AccessKeyId": ident.access_key, "SecretAccessKey": ident.secret_key, "Token": "",
                    "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", expires)}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1/credentials"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def container_endpoint(seaweedfs: SeaweedFS, aws_home: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[CredentialsEndpoint]:
    token_file = aws_home / "pod-identity-token"
    token_file.write_text("pod-token-" + uuid.uuid4().hex)
    endpoint = CredentialsEndpoint([seaweedfs.custos], auth_token=token_file.read_text())
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    yield endpoint
    endpoint.close()


# -- every source of the chain works against the real server --------------------------------

Setup = Callable[[SeaweedFS, Path, pytest.MonkeyPatch], None]


def _env(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("AWS_ACCESS_KEY_ID", s.custos.access_key)
    mp.setenv("AWS_SECRET_ACCESS_KEY", s.custos.secret_key)


def _default_profile(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    write_credentials_file(home / "aws-credentials", {"default": s.custos})


def _named_profile(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    # The default profile holds keys SeaweedFS does not know: only AWS_PROFILE makes this work.
    write_credentials_file(home / "aws-credentials", {"default": BOGUS, "custos-ops": s.custos})
    mp.setenv("AWS_PROFILE", "custos-ops")


def _config_file_profile(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    write_credentials_file(home / "aws-config", {"custos-cp": s.custos}, config=True)
    mp.setenv("AWS_PROFILE", "custos-cp")


def _process(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    (home / "aws-config").write_text(f"[profile helper]\ncredential_process = {credential_process(home, s.custos)}\n")
    mp.setenv("AWS_PROFILE", "helper")


SOURCES: dict[str, tuple[Setup, str]] = {
    "environment": (_env, "env"),
    "credentials-file-default": (_default_profile, "shared-credentials-file"),
    "credentials-file-AWS_PROFILE": (_named_profile, "shared-credentials-file"),
    "config-file-profile": (_config_file_profile, "config-file"),
    "credential_process": (_process, "custom-process"),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_store_without_keys_takes_credentials_from_the_default_chain(
        source: str, seaweedfs: SeaweedFS, aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup, method = SOURCES[source]
    setup(seaweedfs, aws_home, monkeypatch)
    with open_blob_store(url_of(seaweedfs)) as store:
        assert store.credential_source == method  # type: ignore[attr-defined]
        round_trip(store)
        assert seaweedfs.custos.secret_key not in repr(store)


def test_container_credentials_with_an_authorization_token(
        seaweedfs: SeaweedFS, container_endpoint: CredentialsEndpoint) -> None:
    with open_blob_store(url_of(seaweedfs)) as store:
        assert store.credential_source == "container-role"  # type: ignore[attr-defined]
        round_trip(store)
    assert container_endpoint.fetches >= 1 and container_endpoint.refused == 0


def test_control_plane_blobs_section_without_keys_uses_the_chain(
        seaweedfs: SeaweedFS, aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from custos.controlplane.server import open_blobs

    _named_profile(seaweedfs, aws_home, monkeypatch)
    store, _ = open_blobs({"url": url_of(seaweedfs)})
    with store:
        round_trip(store)


def test_expiring_credentials_are_refreshed_and_an_outage_of_their_source_is_survived(
        seaweedfs: SeaweedFS, container_endpoint: CredentialsEndpoint) -> None:
    """A long-lived store outlives its temporary credentials; their endpoint going down fails
    calls cleanly (nothing half-written) and the same store works again once it is back."""
    # Two valid identities in turn, each expiring within botocore's refresh window: every
    # call refreshes, so a store that kept its first credentials would sign with stale ones.
    container_endpoint.identities = [seaweedfs.custos, seaweedfs.admin]
    with open_blob_store(url_of(seaweedfs)) as store:
        for i in range(4):
            store.put(f"artifacts/a/{i:06d}", b"x" * 10)
        assert container_endpoint.fetches >= 3
        container_endpoint.failing = True
        with pytest.raises(BackendUnavailable) as err:
            store.put("artifacts/a/000009", b"lost?")
        assert seaweedfs.custos.secret_key not in str(err.value)
        container_endpoint.failing = False
        assert [o.key for o in store.list("artifacts/")] == [f"artifacts/a/{i:06d}" for i in range(4)]
        store.put("artifacts/a/000009", b"stored")
        assert store.read_range("artifacts/a/000009", 0, 6) == b"stored"


# -- precedence: what the configuration names wins over the chain ----------------------------


def test_explicit_keys_win_over_the_chain(seaweedfs: SeaweedFS, aws_home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", BOGUS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BOGUS.secret_key)
    with open_blob_store(url_of(seaweedfs), access_key=seaweedfs.custos.access_key,
                         secret_key=seaweedfs.custos.secret_key) as store:
        assert store.credential_source == "static"  # type: ignore[attr-defined]
        round_trip(store)
    monkeypatch.setenv("CUSTOS_S3_ACCESS_KEY", seaweedfs.custos.access_key)
    monkeypatch.setenv("CUSTOS_S3_SECRET_KEY", seaweedfs.custos.secret_key)
    with open_blob_store(url_of(seaweedfs)) as store:
        assert store.credential_source == "static"  # type: ignore[attr-defined]
        round_trip(store)


# -- bad credentials: a clear error, nothing written, no secret in the message ----------------

Attack = Callable[[SeaweedFS, Path, pytest.MonkeyPatch], None]


def _nothing(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    pass


def _missing_profile(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    write_credentials_file(home / "aws-credentials", {"default": s.custos})
    mp.setenv("AWS_PROFILE", "no-such-profile")


def _malformed_file(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    (home / "aws-credentials").write_text(f"aws_access_key_id = {s.custos.access_key}\n[default\n")


def _half_env(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("AWS_ACCESS_KEY_ID", s.custos.access_key)


def _half_custos_env(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("CUSTOS_S3_SECRET_KEY", s.custos.secret_key)


def _wrong_secret(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("AWS_ACCESS_KEY_ID", s.custos.access_key)
    mp.setenv("AWS_SECRET_ACCESS_KEY", s.admin.secret_key)


def _unknown_key_in_profile(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    write_credentials_file(home / "aws-credentials", {"ops": BOGUS})
    mp.setenv("AWS_PROFILE", "ops")


def _failing_process(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    cmd = credential_process(home, s.custos, fail=True)
    (home / "aws-config").write_text(f"[default]\ncredential_process = {cmd}\n")


def _container_endpoint_down(s: SeaweedFS, home: Path, mp: pytest.MonkeyPatch) -> None:
    from tests.servers.ports import free_port

    mp.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{free_port()}/v1/credentials")


# name -> (setup, the error, raised when the store is opened rather than at its first call)
ATTACKS: dict[str, tuple[Attack, type[CustosError], bool]] = {
    "no credentials anywhere": (_nothing, InvalidInput, True),
    "AWS_PROFILE names no profile": (_missing_profile, InvalidInput, True),
    "malformed credentials file": (_malformed_file, InvalidInput, True),
    "AWS_ACCESS_KEY_ID without its secret": (_half_env, InvalidInput, True),
    "CUSTOS_S3_SECRET_KEY without its key": (_half_custos_env, InvalidInput, True),
    "credential_process fails": (_failing_process, BackendUnavailable, True),
    "container endpoint down": (_container_endpoint_down, BackendUnavailable, True),
    "wrong secret in the environment": (_wrong_secret, Unauthorized, False),
    "profile with a key the server does not know": (_unknown_key_in_profile, Unauthorized, False),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_bad_credentials_are_a_clear_error_and_write_nothing(
        attack: str, seaweedfs: SeaweedFS, aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup, error, at_open = ATTACKS[attack]
    url = url_of(seaweedfs)
    prefix = url.split("/", 3)[3].split("?")[0] + "/"
    setup(seaweedfs, aws_home, monkeypatch)
    with pytest.raises(error) as raised:
        store = open_blob_store(url)
        assert not at_open, f"opened with {store.credential_source}"  # type: ignore[attr-defined]
        with store:
            store.put("artifacts/a/000000", b"must not land")
    message = str(raised.value)
    for secret in (seaweedfs.custos.secret_key, seaweedfs.admin.secret_key, BOGUS.secret_key):
        assert secret not in message
    assert "Traceback" not in message and message.strip()
    # The checker's own client must not read what the attack planted.
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_home / "absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_home / "absent"))
    listed = seaweedfs.client(seaweedfs.admin).list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0
