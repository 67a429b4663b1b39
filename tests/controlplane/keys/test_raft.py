"""The Transit provider against a production-shaped OpenBao: raft storage, Shamir unseal.

Unlike the dev server, this one starts uninitialised, is unsealed by a threshold of
key shares, keeps its data on disk across restarts, and can be sealed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from custos.controlplane.keys import KeySuspended, VaultTransitProvider
from custos.errors import BackendUnavailable
from tests.controlplane.keys.conftest import RUNNING_SERVERS, require_bao, root_client
from tests.servers.openbao import OpenBaoRaftServer, RaftInit

SHARES, THRESHOLD = 5, 3
CTX = b"artifact:raft-test"


@dataclass
class Raft:
    server: OpenBaoRaftServer
    init: RaftInit
    sealed_after_init: bool
    after_two_shares: dict[str, object]
    after_three_shares: dict[str, object]

    def provider(self) -> VaultTransitProvider:
        return VaultTransitProvider(url=self.server.address, token=self.init.root_token, timeout=5)

    def unseal(self, shares: tuple[str, ...]) -> None:
        self.server.unseal(shares)
        self.server.wait_active()


@pytest.fixture(scope="module")
def raft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raft]:
    server = OpenBaoRaftServer(tmp_path_factory.mktemp("openbao-raft"), binary=require_bao())
    server.start()
    RUNNING_SERVERS.append(server)
    try:
        init = server.initialize(shares=SHARES, threshold=THRESHOLD)
        health = server.health()
        sealed_after_init = health is not None and health.get("sealed") is True
        after_two = server.unseal(init.keys[:2])
        after_three = server.unseal(init.keys[2:3])
        server.wait_active()
        root_client(server).sys.enable_secrets_engine("transit", path="transit")
        yield Raft(server, init, sealed_after_init, after_two, after_three)
    finally:
        RUNNING_SERVERS.remove(server)
        server.stop()


def test_initialised_with_shamir_shares_and_raft_storage(raft: Raft) -> None:
    assert len(set(raft.init.keys)) == SHARES
    assert raft.sealed_after_init
    # Two shares are not enough; the third unseals.
    assert raft.after_two_shares["sealed"] is True
    assert raft.after_two_shares["progress"] == 2
    assert raft.after_two_shares["t"] == THRESHOLD
    assert raft.after_three_shares["sealed"] is False

    config = root_client(raft.server).sys.read_raft_config()["data"]["config"]
    (node,) = config["servers"]
    assert node["node_id"] == raft.server.node_id
    assert node["leader"] is True


def test_round_trip_and_suspension_on_raft(raft: Raft) -> None:
    with raft.provider() as provider:
        provider.ensure_key("raft-model")
        data_key = provider.generate_data_key("raft-model", CTX)
        assert provider.unwrap("raft-model", data_key.wrapped, CTX) == data_key.plaintext

        provider.rotate("raft-model")
        rewrapped = provider.rewrap("raft-model", data_key.wrapped, CTX)
        assert rewrapped.startswith("vault:v2:")

        assert provider.suspend("raft-model").suspended
        with pytest.raises(KeySuspended):
            provider.unwrap("raft-model", rewrapped, CTX)
        assert not provider.resume("raft-model").suspended
        assert provider.unwrap("raft-model", rewrapped, CTX) == data_key.plaintext


def test_sealed_server_is_backend_unavailable(raft: Raft) -> None:
    with raft.provider() as provider:
        provider.ensure_key("raft-seal")
        data_key = provider.generate_data_key("raft-seal", CTX)

        root_client(raft.server).sys.seal()
        try:
            for operation in (
                lambda: provider.state("raft-seal"),
                lambda: provider.unwrap("raft-seal", data_key.wrapped, CTX),
                lambda: provider.generate_data_key("raft-seal", CTX),
                lambda: provider.suspend("raft-seal"),
            ):
                with pytest.raises(BackendUnavailable):
                    operation()
        finally:
            # Any threshold-sized subset of the shares unseals.
            raft.unseal(raft.init.keys[2:5])

        assert provider.unwrap("raft-seal", data_key.wrapped, CTX) == data_key.plaintext


def test_keys_and_suspension_survive_a_restart(raft: Raft) -> None:
    with raft.provider() as provider:
        provider.ensure_key("raft-active")
        provider.ensure_key("raft-halted")
        active = provider.generate_data_key("raft-active", CTX)
        halted = provider.generate_data_key("raft-halted", CTX)
        provider.suspend("raft-halted")

        raft.server.stop()
        try:
            with pytest.raises(BackendUnavailable):
                provider.unwrap("raft-active", active.wrapped, CTX)
        finally:
            raft.server.start()
        # Back up, but sealed until a threshold of shares is given again.
        with pytest.raises(BackendUnavailable):
            provider.unwrap("raft-active", active.wrapped, CTX)
        raft.unseal(raft.init.keys[:1] + raft.init.keys[3:5])

        assert provider.unwrap("raft-active", active.wrapped, CTX) == active.plaintext
        assert provider.state("raft-halted").suspended
        with pytest.raises(KeySuspended):
            provider.unwrap("raft-halted", halted.wrapped, CTX)
        provider.resume("raft-halted")
        assert provider.unwrap("raft-halted", halted.wrapped, CTX) == halted.plaintext
