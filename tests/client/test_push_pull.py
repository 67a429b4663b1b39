"""Encrypted push and verified pull against a real dev control plane (local keys and blobs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from custos.blobs.local import LocalBlobStore
from custos.client import pull as pull_mod
from custos.client import push as push_mod
from custos.client.pull import pull
from custos.client.push import push as push_lib
from custos.client.session import Client
from custos.client.transfer import Pusher, PushState
from custos.core.manifest import Manifest
from custos.errors import IntegrityError, InvalidInput
from custos.fs.hashing import build_manifest
from tests.servers.custos import CUSTOS, DevServer

MiB = 1 << 20


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("push-dev")).start()
    server.cli("model", "register", "m", "--training-flops", "3e26", check=True)
    yield server
    server.stop()


def weights(root: Path, seed: int, big: int = 12 * MiB) -> Path:
    import random

    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(rng.randbytes(big))
    (root / "sub" / "adapter.bin").write_bytes(rng.randbytes(300_000))
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    (root / "empty.bin").write_bytes(b"")
    return root


def push(srv: DevServer, d: Path, *extra: str, state: Path | None = None) -> dict:  # type: ignore[type-arg]
    args = ["push", "m", str(d), "-o", "json", *extra]
    if state:
        args += ["--state-dir", str(state)]
    art = json.loads(srv.cli(*args, check=True).stdout)
    if art.get("id"):
        srv.grant("m", artifact=art["id"])  # the two-person rule: sec1 asks, sec2 approves
    return art  # type: ignore[no-any-return]


def blob_root(srv: DevServer) -> Path:
    return srv.data_dir / "blobs"


def object_files(srv: DevServer, aid: str) -> list[Path]:
    return sorted((blob_root(srv) / "objects" / "artifacts" / aid).iterdir())


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_pull_roundtrip_private_files_and_audit(srv: DevServer, tmp_path: Path) -> None:
    src = weights(tmp_path / "w", 1)
    art = push(srv, src, state=tmp_path / "state")
    assert art["stored"] and art["files"] and art["resumed"] is False
    dest = tmp_path / "out" / "pulled"
    res = json.loads(srv.cli("pull", art["id"][:16], str(dest), "-o", "json", check=True).stdout)
    assert res["artifact_id"] == art["id"]
    assert tree(dest) == tree(src)
    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in dest.rglob("*") if p.is_file())
    assert [p.name for p in dest.parent.iterdir()] == ["pulled"]  # no staging left behind
    copies = json.loads(srv.cli("copies", "m", "-o", "json", check=True).stdout)["copies"]
    forms = {(c["form"], c["location_kind"]) for c in copies if c["artifact_id"] == art["id"]}
    assert forms == {("ciphertext", "object-store"), ("plaintext", "host-path")}
    events = json.loads(srv.cli("audit", "list", "-o", "json", check=True).stdout)
    mine = [(e["action"], e["result"]) for e in events if e["object"] == f"artifact/{art['id']}"]
    assert ("CreateDataKey", "ok") in mine and ("RegisterStoredArtifact", "ok") in mine
    # The release names the access grant it was under.
    assert any(a == "UnwrapDataKey" and r.startswith("ok: pull; grant ") for a, r in mine)
    assert ("RecordCopy", "ok") in mine
    assert not list((tmp_path / "state").glob("*.json"))  # resume state removed after success


def test_no_plaintext_in_the_blob_store_or_state(srv: DevServer, tmp_path: Path) -> None:
    src = weights(tmp_path / "w", 2)
    art = push(srv, src, state=tmp_path / "state")
    plaintext = (src / "model.safetensors").read_bytes()
    probes = [plaintext[i:i + 32] for i in range(0, len(plaintext) - 32, len(plaintext) // 50)]
    probes.append((src / "sub" / "adapter.bin").read_bytes()[:32])
    stored = b"".join(p.read_bytes() for p in blob_root(srv).rglob("*") if p.is_file())
    assert len(stored) > len(plaintext)
    assert not any(p in stored for p in probes)
    db = (srv.data_dir / "custos.db").read_bytes()
    assert not any(p in db for p in probes)
    assert art["id"] in json.dumps(art)


def test_second_push_is_a_no_op(srv: DevServer, tmp_path: Path) -> None:
    src = weights(tmp_path / "w", 3, big=1000)
    first = push(srv, src)
    again = push(srv, src)
    assert again["already_stored"] is True and again["id"] == first["id"]


def test_pull_refuses_existing_destination(srv: DevServer, tmp_path: Path) -> None:
    art = push(srv, weights(tmp_path / "w", 4, big=1000))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    res = srv.cli("pull", art["id"], str(dest))
    assert res.returncode == 2 and "already exists" in res.stderr
    assert tree(dest) == {"keep.txt": b"mine"}


def _tamper(path: Path, how: str, other: Path | None = None, *, base: int = 0) -> None:
    """``base``: where the object's bytes start in the local store's file."""
    data = bytearray(path.read_bytes())
    if how == "flip-body":
        data[base + (len(data) - base) // 2] ^= 0x01
    elif how == "flip-header":
        data[base + 20] ^= 0x80  # the plaintext length field of the chunked header
    elif how == "flip-last-tag":
        data[-1] ^= 0x01
    elif how == "truncate":
        data = data[: len(data) - 100]
    elif how == "append":
        data += b"\x00" * 16
    elif how == "swap-other-file" and other is not None:
        data = data[:base] + bytearray(other.read_bytes())[base:]
    path.chmod(0o600)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip-body", "flip-header", "flip-last-tag", "truncate", "append",
                                 "swap-other-file"])
def test_tampered_ciphertext_fails_pull_and_leaves_nothing(srv: DevServer, tmp_path: Path, how: str) -> None:
    art = push(srv, weights(tmp_path / "w", 10 + len(how), big=3 * MiB))
    files = object_files(srv, art["id"])
    # Manifest order: config.json, empty.bin, model.safetensors, sub/adapter.bin
    target, other = files[2], files[3]
    original = target.read_bytes()
    info = LocalBlobStore(blob_root(srv)).head(f"artifacts/{art['id']}/000002")
    assert info is not None
    _tamper(target, how, other, base=len(original) - info.size)
    try:
        dest = tmp_path / "out" / "pulled"
        res = srv.cli("pull", art["id"], str(dest))
        assert res.returncode == 7, (res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not dest.exists() and list((tmp_path / "out").iterdir()) == []
    finally:
        target.write_bytes(original)


def test_object_spliced_from_another_artifact_fails(srv: DevServer, tmp_path: Path) -> None:
    a = push(srv, weights(tmp_path / "a", 21, big=1000))
    b = push(srv, weights(tmp_path / "b", 22, big=1000))
    fa, fb = object_files(srv, a["id"])[2], object_files(srv, b["id"])[2]
    original = fa.read_bytes()
    fa.write_bytes(fb.read_bytes())
    try:
        res = srv.cli("pull", a["id"], str(tmp_path / "dest"))
        assert res.returncode == 7 and "failed authentication" in res.stderr
        assert not (tmp_path / "dest").exists()
    finally:
        fa.write_bytes(original)


def test_roles_for_keys(srv: DevServer, tmp_path: Path) -> None:
    art = push(srv, weights(tmp_path / "w", 30, big=1000))
    # The agent role alone is not enough: only an enrolled host with a live lease gets keys.
    stray = srv.cli("pull", art["id"], str(tmp_path / "agent-copy"), role="agent")
    assert stray.returncode == 4 and "not enrolled" in stray.stderr, stray.stderr
    assert not (tmp_path / "agent-copy").exists()
    denied = srv.cli("pull", art["id"], str(tmp_path / "auditor-copy"), role="auditor")
    assert denied.returncode == 4 and "UnwrapDataKey" in denied.stderr
    assert not (tmp_path / "auditor-copy").exists()
    res = srv.cli("push", "m", str(weights(tmp_path / "x", 31, big=10)), role="executive")
    assert res.returncode == 4


def test_pull_of_registered_but_not_stored_artifact(srv: DevServer, tmp_path: Path) -> None:
    d = weights(tmp_path / "w", 40, big=100)
    art = json.loads(srv.cli("artifact", "register", "m", str(d), "-o", "json", check=True).stdout)
    res = srv.cli("pull", art["id"], str(tmp_path / "dest"))
    assert res.returncode == 6 and "no stored ciphertext" in res.stderr
    # Pushing it afterwards stores the already registered artifact.
    pushed = push(srv, d)
    assert pushed["id"] == art["id"] and pushed["stored"]


def test_library_push_pull_progress_and_every_key_zeroized(srv: DevServer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocols as the CLI and a console call them: progress as (done, total), each data key
    zeroized however its transfer ended."""
    for k, v in srv.client_env().items():
        monkeypatch.setenv(k, v)
    keys: list[bytearray] = []

    def spy(buf: bytearray) -> None:
        keys.append(buf)
        real(buf)

    real = push_mod.zeroize
    monkeypatch.setattr(push_mod, "zeroize", spy)
    monkeypatch.setattr(pull_mod, "zeroize", spy)
    src = weights(tmp_path / "w", 60, big=2 * MiB)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    pushed: list[tuple[int, int]] = []
    pulled: list[tuple[int, int]] = []
    with Client.from_env() as client:
        with pytest.raises(InvalidInput, match="unknown blob store URL"):
            push_lib(client, "m", src, blobs="bogus://x", state_dir=tmp_path / "state")
        res = push_lib(client, "m", src, state_dir=tmp_path / "state", progress=lambda d, t: pushed.append((d, t)))
        assert not res.already_stored and res.stats.files == 4 and res.stats.bytes == total
        assert push_lib(client, "m", src).already_stored
        srv.grant("m", artifact=res.artifact.id)
        got = pull(client, res.artifact.id[:16], tmp_path / "out", progress=lambda d, t: pulled.append((d, t)))
    assert got.artifact.id == res.artifact.id and got.copy.artifact_id == res.artifact.id
    assert tree(got.dest) == tree(src)
    for seen in (pushed, pulled):
        assert seen[-1] == (total, total)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(keys) == 4 and sum(1 for k in keys if k) >= 3
    assert not any(any(k) for k in keys)


def test_file_changed_after_hashing_is_refused(tmp_path: Path) -> None:
    src = weights(tmp_path / "w", 50, big=6 * MiB)
    manifest = build_manifest(src)
    with open(src / "model.safetensors", "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"changed!")
    blobs = LocalBlobStore(tmp_path / "blobs")
    pusher = Pusher(blobs=blobs, data_key=bytearray(32), artifact_id=manifest.artifact_id, manifest=manifest,
                    root=src, state=PushState(tmp_path / "s.json"), resumed=False)
    with pytest.raises(IntegrityError, match="changed since it was hashed"):
        pusher.run()
    assert blobs.head(f"artifacts/{manifest.artifact_id}/000002") is None


@pytest.mark.slow
def test_kill_9_push_resumes_without_reuploading(srv: DevServer, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "model.safetensors", "wb") as f:
        for i in range(24):
            f.write(os.urandom(4 * MiB) if i % 2 else bytes([i]) * (4 * MiB))
    manifest: Manifest = build_manifest(src)
    aid = manifest.artifact_id
    state = tmp_path / "state"
    proc = subprocess.Popen([*CUSTOS, "push", "m", str(src), "--state-dir", str(state), "-o", "json"],
                            env=srv.client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    blobs = LocalBlobStore(blob_root(srv))
    okey = f"artifacts/{aid}/000000"
    deadline = time.monotonic() + 60
    done_parts = 0
    while time.monotonic() < deadline and proc.poll() is None:
        ups = blobs.list_uploads(okey)
        if ups:
            done_parts = len(blobs.list_parts(okey, ups[0]))
            if done_parts >= 2:
                break
        time.sleep(0.005)
    assert proc.poll() is None, "push finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Not registered as stored while its objects are missing.
    shown = srv.cli("artifact", "show", aid, "-o", "json")
    assert shown.returncode == 3
    second = json.loads(srv.cli("push", "m", str(src), "--state-dir", str(state), "-o", "json",
                                check=True).stdout)
    assert second["resumed"] is True and second["parts_skipped"] >= 2
    assert second["parts_uploaded"] + second["parts_skipped"] == 12
    dest = tmp_path / "pulled"
    srv.grant("m", artifact=aid)
    srv.cli("pull", aid, str(dest), check=True)
    assert tree(dest) == tree(src)


def _unwraps(srv: DevServer, aid: str) -> int:
    events = json.loads(srv.cli("audit", "list", "-o", "json", check=True).stdout)
    return sum(1 for e in events if e["action"] == "UnwrapDataKey" and e["object"] == f"artifact/{aid}")


@pytest.mark.parametrize("link_to", ["empty-dir", "full-dir", "file", "nowhere", "itself"])
def test_pull_refuses_a_symlinked_destination(srv: DevServer, tmp_path: Path, link_to: str) -> None:
    """A link at DEST (planted, or stale) would send plaintext elsewhere than the copy records:
    refused before the key is unwrapped, the link and what it points to left as they were."""
    art = push(srv, weights(tmp_path / "w", 70, big=1000))
    out = tmp_path / "out"
    out.mkdir()
    target = out / "target"
    if link_to == "empty-dir":
        target.mkdir()
    elif link_to == "full-dir":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif link_to == "file":
        target.write_text("mine")
    dest = out / "dest"
    dest.symlink_to(dest if link_to == "itself" else target)
    before = {p.name for p in out.iterdir()}
    unwraps = _unwraps(srv, art["id"])
    res = srv.cli("pull", art["id"], str(dest))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "symbolic link" in res.stderr
    assert dest.is_symlink() and {p.name for p in out.iterdir()} == before  # no staging left
    if target.is_dir():
        assert tree(target) == ({"keep.txt": b"mine"} if link_to == "full-dir" else {})
    assert _unwraps(srv, art["id"]) == unwraps


def test_pull_refuses_a_destination_name_that_is_not_utf8(srv: DevServer, tmp_path: Path) -> None:
    """The copy is recorded under DEST's name, so a name with no UTF-8 form (bytes 0xff) is
    refused before the key is unwrapped: no plaintext lands where no record can name it."""
    art = push(srv, weights(tmp_path / "w", 73, big=1000))
    out = tmp_path / "out"
    out.mkdir()
    unwraps = _unwraps(srv, art["id"])
    res = srv.cli("pull", art["id"], str(out / "dest\udcff"))  # argv carries the raw byte 0xff
    assert res.returncode == 2, (res.stdout, res.stderr)
    # Refused at the CLI's door (every argument), or by the pull itself when called as a library.
    assert "Traceback" not in res.stderr and ("not valid UTF-8" in res.stderr or "not a UTF-8 name" in res.stderr)
    assert list(out.iterdir()) == [] and _unwraps(srv, art["id"]) == unwraps


def test_pull_into_a_destination_that_turns_into_a_link_mid_pull(srv: DevServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The check-then-rename race: a link planted at DEST while the files decrypt is not
    followed (rename(2) fails on it); the pull fails cleanly and leaves no plaintext."""
    art = push(srv, weights(tmp_path / "w", 71, big=1000))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()

    planted = threading.Lock()

    class Planting(LocalBlobStore):
        """The dev server's own blob directory; a link appears at DEST on the first read."""

        def read_range(self, key: str, start: int, length: int) -> bytes:
            with planted:  # reads run in parallel threads: plant the link once
                if not dest.is_symlink():
                    dest.symlink_to(elsewhere)
            return super().read_range(key, start, length)

    for k, v in srv.client_env().items():
        monkeypatch.setenv(k, v)
    with Client.from_env() as client:
        resp = pull_mod.unwrap_data_key(client, art["id"], "pull")
    key = bytearray(resp.data_key)
    with pytest.raises(InvalidInput, match="cannot move the pulled files"):
        pull_mod.pull_artifact(Planting(blob_root(srv)), data_key=key, artifact=resp.artifact, dest=dest)
    assert dest.is_symlink() and list(elsewhere.iterdir()) == []
    assert [p.name for p in dest.parent.iterdir()] == ["dest"]  # the staging directory is gone


@pytest.mark.parametrize("keep", [0, 1, 85, 86, 87, "one-short"])
def test_a_short_or_empty_object_fails_verification(srv: DevServer, tmp_path: Path, keep: int | str) -> None:
    """Any object shorter than its header says (empty, cut inside or right after the header,
    one byte short) is verification failed (exit 7), never bad input (2) or a traceback."""
    art = push(srv, weights(tmp_path / "w", 72 + (keep if isinstance(keep, int) else 99), big=3000))
    blobs = LocalBlobStore(blob_root(srv))
    okey = f"artifacts/{art['id']}/000002"  # model.safetensors
    info = blobs.head(okey)
    assert info is not None
    original = blobs.read_range(okey, 0, info.size)
    blobs.put(okey, original[: info.size - 1 if keep == "one-short" else int(keep)])
    dest = tmp_path / "out" / "dest"
    try:
        res = srv.cli("pull", art["id"], str(dest))
        assert res.returncode == 7, (keep, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not dest.exists() and list(dest.parent.iterdir()) == []
    finally:
        blobs.put(okey, original)
