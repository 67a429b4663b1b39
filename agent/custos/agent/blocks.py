"""What halts leave behind on a host: the refusals of halted scopes, and the manifests the agent knows.

:class:`HaltBlocks` refuses new pulls and runs of a halted scope; explicit scopes
survive an agent restart (STATE_DIR/halts.json). :class:`ManifestCache` holds the
manifests of artifacts the agent has pulled or been told of, so a halt can find
their plaintext.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

from custos.core.manifest import Manifest, decode_manifest, is_artifact_id
from custos.errors import IntegrityError, InvalidInput
from custos.fs.private import write_private

log = logging.getLogger("custos.agent.halt")


class ManifestCache:
    """Manifests of artifacts this agent has seen (pulls), kept in STATE_DIR/manifests.

    Only hashes and paths, no key material. A file that does not hash to its
    artifact id is ignored (and removed): it cannot make the agent attribute
    a file to the wrong artifact. Thread-safe.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._mem: dict[str, Manifest] = {}

    def put(self, artifact_id: str, manifest: Manifest) -> None:
        """Raises IntegrityError if the manifest is not the artifact's."""
        if manifest.artifact_id != artifact_id:
            raise IntegrityError(f"manifest does not hash to artifact {artifact_id[:12]}")
        with self._lock:
            if artifact_id in self._mem:
                return
            self._mem[artifact_id] = manifest

            write_private(self.directory / artifact_id, manifest.encode())

    def get(self, artifact_id: str) -> Manifest | None:
        with self._lock:
            m = self._mem.get(artifact_id)
            if m is not None:
                return m
        path = self.directory / artifact_id
        if not is_artifact_id(artifact_id) or not path.exists():
            return None
        try:
            m = decode_manifest(path.read_bytes())
        except (OSError, InvalidInput):
            m = None
        if m is None or m.artifact_id != artifact_id:
            path.unlink(missing_ok=True)
            return None
        with self._lock:
            self._mem[artifact_id] = m
        return m

    def known(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(n for n in names if is_artifact_id(n))


class HaltBlocks:
    """What the agent refuses to pull or run, and why. Thread-safe.

    ``all`` (fail closed, host removed, shutting down) refuses everything and is
    kept in memory; per-artifact refusals (halt orders) are persisted.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._all: str | None = None
        self._artifacts: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                self._artifacts = {str(k): str(v) for k, v in data.get("artifacts", {}).items()
                                   if is_artifact_id(str(k))}
            except (OSError, ValueError, AttributeError) as exc:
                # Fail closed: an unreadable halt record refuses everything until someone looks.
                self._all = f"halt record {path} unreadable ({exc}); refusing all runs"
                log.error("halt record unreadable: refusing every run", extra={"fields": {"path": str(path)}})

    def refusal(self, artifact_id: str) -> str | None:
        """Why runs of ``artifact_id`` are refused now, or None."""
        with self._lock:
            if self._all is not None:
                return self._all
            return self._artifacts.get(artifact_id)

    @property
    def all_reason(self) -> str | None:
        with self._lock:
            return self._all

    def block(self, scope: Collection[str] | None, reason: str) -> None:
        with self._lock:
            if scope is None:
                self._all = reason
                return
            for aid in scope:
                self._artifacts[aid] = reason
            self._save()

    def unblock(self, scope: Collection[str] | None) -> None:
        with self._lock:
            if scope is None:
                self._all = None
                return
            for aid in scope:
                self._artifacts.pop(aid, None)
            self._save()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"all": self._all, "artifacts": dict(self._artifacts)}

    def _save(self) -> None:
        if self.path is None:
            return

        write_private(self.path, json.dumps({"artifacts": self._artifacts}, sort_keys=True).encode())
