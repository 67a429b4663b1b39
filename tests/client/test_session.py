"""The client session against a real gRPC server (mTLS) standing in for the control plane:
every status code becomes its custos.errors class with the server's details, and the CLI
turns each into its exit code and one line on stderr."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from custos import errors
from custos.cli.main import main
from custos.client import registry
from custos.client.connection import ClientConfig
from custos.client.session import Client
from custos.controlplane.pki import ensure_dev_pki
from custos.errors import BackendUnavailable, CustosError, InvalidInput, NotFound
from custos.v1 import registry_pb2, registry_pb2_grpc
from tests.servers.ports import free_port


class Registry(registry_pb2_grpc.RegistryServicer):
    """GetModel NAME aborts with the status code NAME (e.g. NOT_FOUND) and details saying so;
    "slow" sleeps past the client's timeout; "bare" aborts without details; else a model."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def GetModel(self, request: registry_pb2.GetModelRequest,
                 context: grpc.ServicerContext) -> registry_pb2.GetModelResponse:
        self.request_ids.append(dict(context.invocation_metadata()).get("x-request-id", ""))
        if request.name == "slow":
            time.sleep(1.5)
        elif request.name == "bare":
            context.abort(grpc.StatusCode.NOT_FOUND, "")
        elif request.name.isupper():
            context.abort(getattr(grpc.StatusCode, request.name), f"the server says {request.name}\nsecond line")
        return registry_pb2.GetModelResponse(model=registry_pb2.Model(name=request.name))


@dataclass
class Double:
    addr: str
    config: ClientConfig
    servicer: Registry
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Double]:
    pki = ensure_dev_pki(tmp_path_factory.mktemp("double"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Registry()
    registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                                        root_certificates=pki.ca_cert.read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    addr = f"127.0.0.1:{port}"
    cfg = ClientConfig(addr=addr, ca=pki.ca_cert, cert=pki.client_cert("security-team"),
                       key=pki.client_key("security-team"), role="security-team")
    env = {"CUSTOS_ADDR": addr, "CUSTOS_CA": str(cfg.ca), "CUSTOS_CERT": str(cfg.cert), "CUSTOS_KEY": str(cfg.key)}
    yield Double(addr=addr, config=cfg, servicer=servicer, env=env)
    server.stop(grace=None)


ERRORS = [
    ("INVALID_ARGUMENT", InvalidInput, 2),
    ("NOT_FOUND", NotFound, 3),
    ("PERMISSION_DENIED", errors.Unauthorized, 4),
    ("UNAUTHENTICATED", errors.Unauthorized, 4),
    ("ALREADY_EXISTS", errors.Conflict, 6),
    ("FAILED_PRECONDITION", errors.FailedPrecondition, 6),
    ("DEADLINE_EXCEEDED", BackendUnavailable, 5),
    ("RESOURCE_EXHAUSTED", CustosError, 1),
    ("INTERNAL", CustosError, 1),
    ("UNKNOWN", CustosError, 1),
]


@pytest.mark.parametrize(("code", "cls", "_rc"), ERRORS)
def test_each_status_is_its_error_with_the_servers_details(double: Double, code: str, cls: type[CustosError],
                                                           _rc: int) -> None:
    with Client(config=double.config, timeout=10) as client, pytest.raises(CustosError) as info:
        registry.get_model(client, code)
    assert type(info.value) is cls
    assert str(info.value) == f"the server says {code}\nsecond line"


def test_unavailable_names_the_control_plane(double: Double) -> None:
    with Client(config=double.config) as client, pytest.raises(BackendUnavailable) as info:
        registry.get_model(client, "UNAVAILABLE")
    assert str(info.value) == f"cannot reach the control plane at {double.addr}: the server says UNAVAILABLE"


def test_nothing_listening_is_unavailable(double: Double) -> None:
    addr = f"127.0.0.1:{free_port()}"
    cfg = ClientConfig(addr=addr, ca=double.config.ca, cert=double.config.cert, key=double.config.key)
    with Client(config=cfg, timeout=5) as client, pytest.raises(BackendUnavailable) as info:
        registry.get_model(client, "m")
    assert str(info.value).startswith(f"cannot reach the control plane at {addr}: ")
    assert "\n" not in str(info.value)


def test_timeout_and_bare_status(double: Double) -> None:
    with Client(config=double.config, timeout=0.3) as client:
        with pytest.raises(BackendUnavailable, match="Deadline Exceeded"):
            registry.get_model(client, "slow")
        with pytest.raises(NotFound) as info:
            registry.get_model(client, "bare")
        assert str(info.value) == "NOT_FOUND"  # no details: the status's name


def test_success_and_a_fresh_request_id_per_call(double: Double) -> None:
    before = len(double.servicer.request_ids)
    with Client(config=double.config) as client:
        assert registry.get_model(client, "m1").name == "m1"
        assert registry.get_model(client, "m2").name == "m2"
    ids = double.servicer.request_ids[before:]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_from_env_flags_win_and_missing_settings_are_named(double: Double, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("CUSTOS_ADDR", "CUSTOS_CA", "CUSTOS_CERT", "CUSTOS_KEY", "CUSTOS_ROLE", "CUSTOS_CERT_DIR"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(InvalidInput, match=r"not configured: CUSTOS_ADDR \(--addr\), CUSTOS_CA"):
        Client.from_env()
    for k, v in double.env.items():
        monkeypatch.setenv(k, v)
    with Client.from_env(addr="127.0.0.1:1", timeout=2) as client:
        assert client.addr == "127.0.0.1:1" and client.timeout == 2


def test_unreadable_key_is_bad_input(double: Double, tmp_path: Path) -> None:
    cfg = ClientConfig(addr=double.addr, ca=double.config.ca, cert=double.config.cert, key=tmp_path / "missing.key")
    with pytest.raises(InvalidInput, match="cannot read client key"):
        Client(config=cfg)


@pytest.mark.parametrize(("code", "_cls", "rc"), [*ERRORS, ("UNAVAILABLE", BackendUnavailable, 5)])
def test_the_cli_exit_code_and_one_line(double: Double, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], code: str, _cls: type, rc: int) -> None:
    for k, v in double.env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as info:
        main(["model", "show", code])
    assert info.value.code == rc
    err = capsys.readouterr().err
    prefix = f"cannot reach the control plane at {double.addr}: " if code == "UNAVAILABLE" else ""
    assert err.startswith(f"custos: error: {prefix}the server says {code}")

