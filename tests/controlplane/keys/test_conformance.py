"""One conformance suite for every KeyProvider backend (local file, OpenBao Transit).

The same tests run against both; backend-specific checks are at the end of the file.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hvac
import pytest

from custos.controlplane.keys import (
    DATA_KEY_BYTES,
    DataKey,
    KeyConflict,
    KeyDestroyed,
    KeyProvider,
    KeyState,
    KeySuspended,
    LocalKeyProvider,
    ProviderClosed,
    VaultTransitProvider,
    wrapped_key_version,
)
from custos.errors import (
    BackendUnavailable,
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
)
from tests.controlplane.keys.conftest import root_client
from tests.servers.openbao import OpenBaoDevServer
from tests.servers.ports import free_port

CTX = b"artifact:sha256:" + bytes(range(32))
OTHER_CTX = b"artifact:sha256:" + bytes(range(1, 33))


def _split(wrapped: str) -> tuple[str, str, bytes]:
    kind, version, payload = wrapped.split(":", 2)
    return kind, version, base64.b64decode(payload)


def _join(kind: str, version: str, raw: bytes) -> str:
    return f"{kind}:{version}:{base64.b64encode(raw).decode()}"


def _flip(index: int) -> Callable[[str], str]:
    def tamper(wrapped: str) -> str:
        kind, version, raw = _split(wrapped)
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        return _join(kind, version, bytes(flipped))

    return tamper


def _resize(delta: int) -> Callable[[str], str]:
    def tamper(wrapped: str) -> str:
        kind, version, raw = _split(wrapped)
        return _join(kind, version, raw[:delta] if delta < 0 else raw + bytes(delta))

    return tamper


def _relabel(version: str) -> Callable[[str], str]:
    def tamper(wrapped: str) -> str:
        kind, _, raw = _split(wrapped)
        return _join(kind, version, raw)

    return tamper


def _other_kind(wrapped: str) -> str:
    kind, version, raw = _split(wrapped)
    return _join("local" if kind == "vault" else "vault", version, raw)


TAMPERINGS: dict[str, Callable[[str], str]] = {
    "first byte flipped": _flip(0),
    "middle byte flipped": _flip(20),
    "last byte flipped": _flip(-1),
    "truncated by one byte": _resize(-1),
    "truncated to the nonce": lambda w: _join(*_split(w)[:2], _split(w)[2][:12]),
    "one byte appended": _resize(1),
    "version too new": _relabel("v7"),
    "other backend's prefix": _other_kind,
    "empty": lambda w: "",
    "not a wrapped key": lambda w: "hello",
    "no payload": lambda w: w.split(":")[0] + ":v1:",
    "version zero": _relabel("v0"),
    "payload not base64": lambda w: w.rsplit(":", 1)[0] + ":@@@@",
    "huge": lambda w: w + "A" * 5000,
}


# -- create, data keys, binding ---------------------------------------------------------


def test_ensure_key_is_idempotent(provider: KeyProvider, key_name: str) -> None:
    assert provider.state(key_name) == KeyState.missing(key_name)

    first = provider.ensure_key(key_name)
    assert first == KeyState(
        name=key_name,
        exists=True,
        latest_version=1,
        min_decryption_version=1,
        suspended=False,
        deletion_allowed=False,
    )
    data_key = provider.generate_data_key(key_name, CTX)

    # A second ensure must neither replace the key nor add a version.
    assert provider.ensure_key(key_name) == first
    assert provider.state(key_name) == first
    assert provider.unwrap(key_name, data_key.wrapped, CTX) == data_key.plaintext


def test_data_key_round_trip(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)

    assert isinstance(data_key.plaintext, bytearray)
    assert len(data_key.plaintext) == DATA_KEY_BYTES
    assert data_key.wrapped.startswith(f"{provider.kind}:v1:")
    assert data_key.version == 1 == wrapped_key_version(data_key.wrapped)

    unwrapped = provider.unwrap(key_name, data_key.wrapped, CTX)
    assert isinstance(unwrapped, bytearray)
    assert unwrapped == data_key.plaintext

    other = provider.generate_data_key(key_name, CTX)
    assert other.plaintext != data_key.plaintext
    assert other.wrapped != data_key.wrapped


def test_unwrap_with_wrong_context_fails(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)

    for context in (OTHER_CTX, CTX[:-1], CTX + b"\x00", b"x"):
        with pytest.raises(IntegrityError):
            provider.unwrap(key_name, data_key.wrapped, context)


def test_unwrap_under_another_key_fails(provider: KeyProvider, key_name: str) -> None:
    other_name = key_name + "-other"
    provider.ensure_key(key_name)
    provider.ensure_key(other_name)
    data_key = provider.generate_data_key(key_name, CTX)

    with pytest.raises(IntegrityError):
        provider.unwrap(other_name, data_key.wrapped, CTX)


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampered_wrapped_key_fails(provider: KeyProvider, key_name: str, how: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)
    tampered = TAMPERINGS[how](data_key.wrapped)
    assert tampered != data_key.wrapped

    with pytest.raises(IntegrityError) as excinfo:
        provider.unwrap(key_name, tampered, CTX)
    # The error names what failed, never the key material.
    message = str(excinfo.value)
    assert base64.b64encode(data_key.plaintext).decode() not in message
    assert data_key.plaintext.hex() not in message


def test_wrapped_key_relabelled_to_another_version_fails(
    provider: KeyProvider, key_name: str
) -> None:
    provider.ensure_key(key_name)
    old = provider.generate_data_key(key_name, CTX)
    provider.rotate(key_name)
    new = provider.generate_data_key(key_name, CTX)

    with pytest.raises(IntegrityError):
        provider.unwrap(key_name, _relabel("v2")(old.wrapped), CTX)
    with pytest.raises(IntegrityError):
        provider.unwrap(key_name, _relabel("v1")(new.wrapped), CTX)


# -- rotation ----------------------------------------------------------------------------


def test_rotate_keeps_old_wrapped_keys_usable(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    old = provider.generate_data_key(key_name, CTX)

    state = provider.rotate(key_name)
    assert state.latest_version == 2
    assert state.min_decryption_version == 1
    assert provider.state(key_name) == state

    assert provider.unwrap(key_name, old.wrapped, CTX) == old.plaintext
    new = provider.generate_data_key(key_name, CTX)
    assert new.version == 2
    assert provider.unwrap(key_name, new.wrapped, CTX) == new.plaintext


def test_rewrap_moves_to_the_latest_version(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    old = provider.generate_data_key(key_name, CTX)
    provider.rotate(key_name)
    provider.rotate(key_name)

    rewrapped = provider.rewrap(key_name, old.wrapped, CTX)
    assert wrapped_key_version(rewrapped) == 3
    assert rewrapped.startswith(f"{provider.kind}:v3:")
    assert provider.unwrap(key_name, rewrapped, CTX) == old.plaintext
    # Still bound to its context after the rewrap.
    with pytest.raises(IntegrityError):
        provider.unwrap(key_name, rewrapped, OTHER_CTX)
    # Rewrap checks the binding too: it cannot launder a key into another context.
    with pytest.raises(IntegrityError):
        provider.rewrap(key_name, old.wrapped, OTHER_CTX)
    with pytest.raises(IntegrityError):
        provider.rewrap(key_name, _flip(5)(old.wrapped), CTX)


# -- suspension ----------------------------------------------------------------------------


def test_suspend_refuses_every_unwrap_until_resume(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    v1 = provider.generate_data_key(key_name, CTX)
    provider.rotate(key_name)
    v2 = provider.generate_data_key(key_name, CTX)

    suspended = provider.suspend(key_name)
    assert suspended.suspended
    assert suspended.exists
    # Every version that ever wrapped a data key is below the decryption floor.
    assert suspended.min_decryption_version > max(v1.version, v2.version)
    assert provider.state(key_name) == suspended

    for data_key in (v1, v2):
        with pytest.raises(KeySuspended) as excinfo:
            provider.unwrap(key_name, data_key.wrapped, CTX)
        assert isinstance(excinfo.value, FailedPrecondition)
    with pytest.raises(KeySuspended):
        provider.generate_data_key(key_name, CTX)
    with pytest.raises(KeySuspended):
        provider.rewrap(key_name, v1.wrapped, CTX)
    with pytest.raises(KeySuspended):
        provider.rotate(key_name)
    # Suspending again changes nothing (no version added each time).
    assert provider.suspend(key_name) == suspended

    resumed = provider.resume(key_name)
    assert not resumed.suspended
    assert resumed.min_decryption_version == 1
    assert provider.state(key_name) == resumed
    assert provider.resume(key_name) == resumed

    assert provider.unwrap(key_name, v1.wrapped, CTX) == v1.plaintext
    assert provider.unwrap(key_name, v2.wrapped, CTX) == v2.plaintext
    fresh = provider.generate_data_key(key_name, CTX)
    assert provider.unwrap(key_name, fresh.wrapped, CTX) == fresh.plaintext
    assert provider.rotate(key_name).latest_version == resumed.latest_version + 1


def test_resume_of_an_active_key_changes_nothing(provider: KeyProvider, key_name: str) -> None:
    state = provider.ensure_key(key_name)
    assert provider.resume(key_name) == state


# -- destruction -----------------------------------------------------------------------------


def test_destroy_is_final(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)
    provider.rotate(key_name)

    provider.destroy(key_name)
    assert provider.state(key_name) == KeyState.missing(key_name)

    with pytest.raises(KeyDestroyed) as excinfo:
        provider.unwrap(key_name, data_key.wrapped, CTX)
    assert isinstance(excinfo.value, NotFound)
    for operation in (
        lambda: provider.generate_data_key(key_name, CTX),
        lambda: provider.rewrap(key_name, data_key.wrapped, CTX),
        lambda: provider.rotate(key_name),
        lambda: provider.suspend(key_name),
        lambda: provider.resume(key_name),
    ):
        with pytest.raises(KeyDestroyed):
            operation()
    provider.destroy(key_name)  # idempotent: a retried destroy order succeeds


def test_ensure_key_after_destroy_does_not_resurrect(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    old = provider.generate_data_key(key_name, CTX)
    provider.destroy(key_name)

    # Documented behaviour: a new key, new material, version 1 again...
    reborn = provider.ensure_key(key_name)
    assert reborn.exists and reborn.latest_version == 1 and not reborn.suspended
    # ...under which the old wrapped key (same name, same "v1") does not open.
    with pytest.raises(IntegrityError):
        provider.unwrap(key_name, old.wrapped, CTX)


def test_destroy_of_a_suspended_key(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)
    provider.suspend(key_name)

    provider.destroy(key_name)
    assert not provider.state(key_name).exists
    with pytest.raises(KeyDestroyed):
        provider.unwrap(key_name, data_key.wrapped, CTX)


def test_operations_on_a_missing_key(provider: KeyProvider, key_name: str) -> None:
    assert provider.state(key_name) == KeyState.missing(key_name)
    with pytest.raises(KeyDestroyed):
        provider.generate_data_key(key_name, CTX)
    with pytest.raises(KeyDestroyed):
        provider.unwrap(key_name, f"{provider.kind}:v1:" + "A" * 80, CTX)
    provider.destroy(key_name)
    assert provider.state(key_name) == KeyState.missing(key_name)


# -- input validation --------------------------------------------------------------------------

BAD_NAMES: list[object] = [
    "",
    "A",
    "Model",
    "-a",
    "a-",
    "a.",
    ".a",
    "_a",
    "a/b",
    "../a",
    "a b",
    "a\n",
    "é",
    "a" * 129,
    None,
    b"abc",
    42,
]
GOOD_NAMES = ["a", "0", "m-1.2_3", "a" * 128]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_key_names_are_refused_everywhere(provider: KeyProvider, name: object) -> None:
    calls: list[Callable[[], object]] = [
        lambda: provider.ensure_key(name),  # type: ignore[arg-type]
        lambda: provider.generate_data_key(name, CTX),  # type: ignore[arg-type]
        lambda: provider.unwrap(name, f"{provider.kind}:v1:AAAA", CTX),  # type: ignore[arg-type]
        lambda: provider.rotate(name),  # type: ignore[arg-type]
        lambda: provider.rewrap(name, f"{provider.kind}:v1:AAAA", CTX),  # type: ignore[arg-type]
        lambda: provider.suspend(name),  # type: ignore[arg-type]
        lambda: provider.resume(name),  # type: ignore[arg-type]
        lambda: provider.destroy(name),  # type: ignore[arg-type]
        lambda: provider.state(name),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_key_names_work(provider: KeyProvider, name: str) -> None:
    provider.ensure_key(name)
    data_key = provider.generate_data_key(name, CTX)
    assert provider.unwrap(name, data_key.wrapped, CTX) == data_key.plaintext
    provider.destroy(name)


@pytest.mark.parametrize("context", ["artifact", b"", bytearray(b"x"), b"x" * 1025, None], ids=repr)
def test_bad_contexts_are_refused(provider: KeyProvider, key_name: str, context: object) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)
    with pytest.raises(InvalidInput):
        provider.generate_data_key(key_name, context)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        provider.unwrap(key_name, data_key.wrapped, context)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        provider.rewrap(key_name, data_key.wrapped, context)  # type: ignore[arg-type]


def test_wrapped_key_must_be_a_string(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)
    with pytest.raises(InvalidInput):
        provider.unwrap(key_name, data_key.wrapped.encode(), CTX)  # type: ignore[arg-type]


# -- key material hygiene ------------------------------------------------------------------------


def test_key_material_is_zeroizable_and_not_shared(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    data_key = provider.generate_data_key(key_name, CTX)
    original = bytes(data_key.plaintext)
    assert any(original)

    assert original.hex() not in repr(data_key)
    assert "plaintext" not in repr(data_key)

    buffer = data_key.plaintext
    data_key.zeroize()
    assert data_key.plaintext is buffer  # wiped in place, not replaced
    assert buffer == bytearray(DATA_KEY_BYTES)

    first = provider.unwrap(key_name, data_key.wrapped, CTX)
    assert first == original
    first[:] = bytes(len(first))
    # Each unwrap hands out a fresh buffer: wiping one does not affect the next.
    assert provider.unwrap(key_name, data_key.wrapped, CTX) == original


def test_concurrent_use_from_threads(provider: KeyProvider, key_name: str) -> None:
    # The control plane calls providers through asyncio.to_thread.
    provider.ensure_key(key_name)

    def round_trip(i: int) -> bool:
        context = CTX + i.to_bytes(2, "big")
        data_key = provider.generate_data_key(key_name, context)
        return provider.unwrap(key_name, data_key.wrapped, context) == data_key.plaintext

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(pool.map(round_trip, range(24)))


def test_closed_provider_refuses_calls(provider: KeyProvider, key_name: str) -> None:
    provider.ensure_key(key_name)
    provider.close()
    provider.close()  # idempotent
    with pytest.raises(ProviderClosed):
        provider.state(key_name)


def test_data_key_checks_its_invariants() -> None:
    with pytest.raises(InvalidInput):
        DataKey(plaintext=bytearray(16), wrapped="local:v1:AAAA")
    with pytest.raises(InvalidInput):
        DataKey(plaintext=bytes(32), wrapped="local:v1:AAAA")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        DataKey(plaintext=bytearray(32), wrapped="local:1:AAAA")


# =========================================================================================
# Backend-specific behaviour
# =========================================================================================

# -- Vault / OpenBao Transit ------------------------------------------------------------


def _vault(server: OpenBaoDevServer, **kwargs: object) -> VaultTransitProvider:
    return VaultTransitProvider(url=server.address, token=server.root_token, **kwargs)  # type: ignore[arg-type]


def test_vault_keys_are_prefixed_non_exportable_aes_gcm(
    openbao_dev: OpenBaoDevServer, key_name: str
) -> None:
    with _vault(openbao_dev) as provider:
        provider.ensure_key(key_name)
    key = root_client(openbao_dev).secrets.transit.read_key(f"custos-{key_name}")["data"]
    assert key["type"] == "aes256-gcm96"
    assert key["exportable"] is False
    assert key["derived"] is False
    assert key["allow_plaintext_backup"] is False


@pytest.mark.parametrize(
    "create_kwargs",
    [
        {"key_type": "chacha20-poly1305"},
        {"key_type": "aes256-gcm96", "exportable": True},
        {"key_type": "aes256-gcm96", "derived": True},
    ],
    ids=["other type", "exportable", "derived"],
)
def test_vault_refuses_a_preexisting_key_that_is_not_a_kek(
    openbao_dev: OpenBaoDevServer, key_name: str, create_kwargs: dict[str, object]
) -> None:
    root_client(openbao_dev).secrets.transit.create_key(f"custos-{key_name}", **create_kwargs)
    with _vault(openbao_dev) as provider, pytest.raises(KeyConflict) as excinfo:
        provider.ensure_key(key_name)
    assert isinstance(excinfo.value, Conflict)


def test_vault_suspension_uses_version_floors(openbao_dev: OpenBaoDevServer, key_name: str) -> None:
    transit = root_client(openbao_dev).secrets.transit
    with _vault(openbao_dev) as provider:
        provider.ensure_key(key_name)
        provider.suspend(key_name)
        key = transit.read_key(f"custos-{key_name}")["data"]
        # A suspension version 2 was added; decryption below it is refused by Transit
        # itself, not only by this client.
        assert key["latest_version"] == 2
        assert key["min_decryption_version"] == 2
        assert key["min_encryption_version"] == 2
        provider.resume(key_name)
        key = transit.read_key(f"custos-{key_name}")["data"]
        assert key["min_decryption_version"] == 1
        assert key["min_encryption_version"] == 0


def test_vault_unwrap_after_suspend_is_refused_by_the_server(
    openbao_dev: OpenBaoDevServer, key_name: str
) -> None:
    with _vault(openbao_dev) as provider:
        provider.ensure_key(key_name)
        data_key = provider.generate_data_key(key_name, CTX)
        provider.suspend(key_name)
    # Straight to Transit, around the provider: the server refuses too.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="too old"):
        root_client(openbao_dev).secrets.transit.decrypt_data(
            f"custos-{key_name}",
            ciphertext=data_key.wrapped,
            associated_data=base64.b64encode(CTX).decode(),
        )


def test_vault_unreachable_is_backend_unavailable(key_name: str) -> None:
    provider = VaultTransitProvider(url=f"http://127.0.0.1:{free_port()}", token="t", timeout=2)
    with provider, pytest.raises(BackendUnavailable):
        provider.state(key_name)


def test_vault_missing_mount_is_a_failed_precondition(
    openbao_dev: OpenBaoDevServer, key_name: str
) -> None:
    with _vault(openbao_dev, mount="no-such-mount") as provider, pytest.raises(FailedPrecondition):
        provider.ensure_key(key_name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://127.0.0.1:8200"},
        {"url": "127.0.0.1:8200"},
        {"token": ""},
        {"token": " t "},
        {"mount": "/transit"},
        {"mount": "a b"},
        {"key_prefix": "Custos-"},
        {"timeout": 0},
    ],
    ids=repr,
)
def test_vault_constructor_checks_arguments(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"url": "http://127.0.0.1:8200", "token": "t"}
    arguments.update(kwargs)
    with pytest.raises(InvalidInput):
        VaultTransitProvider(**arguments)  # type: ignore[arg-type]


def test_vault_repr_hides_the_token() -> None:
    provider = VaultTransitProvider(url="http://127.0.0.1:8200", token="s.secret-token")
    assert "secret-token" not in repr(provider)


# -- local key file (development only) -------------------------------------------------------


def test_local_requires_dev_only_and_warns_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(InvalidInput):
        LocalKeyProvider(path, dev_only=False)
    caplog.set_level(logging.WARNING, logger="custos.controlplane.keys.local")
    for _ in range(2):
        LocalKeyProvider(path, dev_only=True).close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("development only" in r.getMessage() for r in warnings)


def test_local_key_file_is_private_and_replaced_atomically(tmp_path: Path, key_name: str) -> None:
    path = tmp_path / "keys.json"
    with LocalKeyProvider(path, dev_only=True) as provider:
        provider.ensure_key(key_name)
        provider.rotate(key_name)
        data_key = provider.generate_data_key(key_name, CTX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # No temporary files left behind; only the key file and its lock.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]
    # Data keys are never stored, only KEKs.
    assert base64.b64encode(data_key.plaintext).decode() not in path.read_text()


def test_local_keys_persist_across_instances(tmp_path: Path, key_name: str) -> None:
    path = tmp_path / "keys.json"
    with LocalKeyProvider(path, dev_only=True) as first:
        first.ensure_key(key_name)
        data_key = first.generate_data_key(key_name, CTX)
        first.suspend(key_name)
    with LocalKeyProvider(path, dev_only=True) as second:
        assert second.state(key_name).suspended
        second.resume(key_name)
        assert second.unwrap(key_name, data_key.wrapped, CTX) == data_key.plaintext


def test_local_destroy_removes_the_material_from_the_file(tmp_path: Path, key_name: str) -> None:
    path = tmp_path / "keys.json"
    with LocalKeyProvider(path, dev_only=True) as provider:
        provider.ensure_key(key_name)
        provider.rotate(key_name)
        materials = json.loads(path.read_text())["keys"][key_name]["versions"].values()
        provider.destroy(key_name)
    text = path.read_text()
    assert key_name not in text
    assert not any(material in text for material in materials)


def test_local_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    LocalKeyProvider(path, dev_only=True).close()
    os.chmod(path, 0o644)
    with pytest.raises(FailedPrecondition):
        LocalKeyProvider(path, dev_only=True)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"format": "other", "keys": {}}',
        b'{"format": "custos.local-keys.v1", "keys": {"a": {}}}',
        b'{"format": "custos.local-keys.v1", "keys": {"a": {"type": "aes256-gcm96", '
        b'"latest_version": 1, "min_decryption_version": 1, "min_encryption_version": 0, '
        b'"deletion_allowed": false, "versions": {"1": "c2hvcnQ="}}}}',
    ],
    ids=["not json", "list", "other format", "empty entry", "short key"],
)
def test_local_refuses_a_malformed_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IntegrityError):
        LocalKeyProvider(path, dev_only=True)
