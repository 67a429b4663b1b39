"""A `custos run` request as the local socket receives it, checked field by field."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from custos.core.names import MODEL_NAME
from custos.errors import InvalidInput

MAX_ARGV = 4096


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A checked `custos run` request, with the identity of who asked (from SO_PEERCRED)."""

    model: str
    artifact: str
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    detach: bool
    uid: int
    gid: int

    @classmethod
    def parse(cls, data: dict[str, Any], *, uid: int, gid: int) -> RunRequest:
        """Raises InvalidInput naming the bad field."""
        model = data.get("model")
        if not isinstance(model, str) or not MODEL_NAME.match(model):
            raise InvalidInput(f"bad model name {model!r}")
        artifact = data.get("artifact") or ""
        if not isinstance(artifact, str) or (artifact and not re.fullmatch(r"[0-9a-f]{8,64}", artifact)):
            raise InvalidInput(f"bad artifact id {artifact!r}: want at least 8 hex digits")
        argv = data.get("argv")
        if (not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV
                or not all(isinstance(a, str) and "\0" not in a for a in argv) or not argv[0]):
            raise InvalidInput("argv must be a non-empty list of strings (the command after --)")
        cwd = data.get("cwd") or "/"
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise InvalidInput("cwd must be an absolute path")
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) and "=" not in k
                                                and "\0" not in k + v for k, v in env.items()):
            raise InvalidInput("env must map names to strings")
        detach = data.get("detach", False)
        if not isinstance(detach, bool):
            raise InvalidInput("detach must be true or false")
        return cls(model=model, artifact=artifact, argv=tuple(argv), cwd=cwd, env=dict(env), detach=detach,
                   uid=uid, gid=gid)
